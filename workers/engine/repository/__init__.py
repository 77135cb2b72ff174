"""Repository: what is stored, how it is named, and who may write or sweep it.

- repository: keyed BLAKE3 chunk ids, zstd payloads, verify-on-read, manifests, packs'
  index objects, the commit barrier.
- backend: where objects live (Backend protocol; LocalBackend for file://).
- manifest: the manifest format (msgpack + zstd body, cheap header; Entry, Header) and
  check_tree(), the tree check every restore runs.
- locks: capture/restore (shared) versus reclaim (exclusive), and per-state restore locks.
- chunker: FastCDC over a file's data extents (holes are never read).
- packformat / packwriter / packreader: tiny packs of small files: the block-framed
  object format, the writer (compresses 1 MiB blocks as they fill), and the reader (range
  reads of just the blocks a file spans, with bounded caches).

Imports: fs, progress, model. Never capture, restore or image.
"""
