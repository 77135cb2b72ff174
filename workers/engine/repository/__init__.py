"""Repository: what is stored, how it is named, and who may write or sweep it.

- repository: keyed BLAKE3 chunk ids, zstd payloads, verify-on-read, manifests, packs'
  index objects, the commit barrier.
- backend: where objects live (Backend protocol; LocalBackend for file://).
- s3backend: S3Backend for s3:// (obstore; parallel uploads, ranged GETs, retries, a
  start-up check naming the bucket); listcache: the per-host cache of what the bucket
  holds, so a capture lists nothing; s3locks: lock objects in the bucket (shared vs
  exclusive, refreshed, stale after 30 min); s3reclaim: the fleet-wide reclaim protocol
  (condemn, then sweep a margin later), written down in its module doc.
- manifest: the manifest format (msgpack + zstd body, cheap header; Entry, Header), read
  whole, a piece at a time, or for the objects it names; lazyentries: a directory's
  entries as a restore holds them (decoded once when few, else each when used); treecheck:
  check_tree(), the tree check every restore and verify runs; dirbody: a directory body compressed
  as a capture's entries become final, in pieces a reader decodes one at a time;
  manifests: reading snapshots/<id> back (Repository is a Manifests).
- reclaim: the mark every reclaim makes and file://'s sweep; verify: every object a
  snapshot needs read and checked.
- locks: capture/restore (shared) versus reclaim (exclusive), and per-state restore locks
  (flock: one machine; s3locks replaces the repository lock on s3://).
- chunker: FastCDC over a file's data extents (holes are never read).
- packformat / packwriter / packreader: tiny packs of small files: the block-framed
  object format, the writer (compresses 1 MiB blocks as they fill), and the reader (range
  reads of just the blocks a file spans, with bounded caches).

Imports: fs, progress, model. Never capture, restore or image.
"""
