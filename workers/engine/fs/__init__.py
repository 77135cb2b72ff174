"""Filesystem primitives, with no knowledge of snapshots.

- fsutil: symlink-safe fd helpers (O_NOFOLLOW walks, renameat2, syncfs, xattrs, data
  extents, hole punching, mount-aware tree removal) and split_state() of a state path.
- directio: O_DIRECT reads and writes with aligned buffers, and the buffered fallback.

Imports: model only.
"""
