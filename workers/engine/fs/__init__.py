"""Filesystem primitives, with no knowledge of snapshots.

- fsutil: symlink-safe fd helpers (O_NOFOLLOW walks, renameat2, syncfs, xattrs, data
  extents, hole punching).
- statepath: a state's path opened without following a symlink in any component
  (open_path), split (split_state), the mounts below it (mount_roots).
- removal: removing a tree a tenant may still be changing (iterative, race-tolerant,
  mount-aware), and the janitor thread that retries what could not be removed at once.
- syncpoint: the sync point after which every change to a file moves its ctime, and which
  ctimes therefore stand for a file's bytes.
- directio: O_DIRECT reads and writes with aligned buffers, and the buffered fallback.

Imports: model only.
"""
