"""Capture: a directory state read into the repository as one snapshot's manifest.

- tree: the first pass, the walk through O_NOFOLLOW directory fds (never a symlink, a
  device or a FIFO), which reuses the parent snapshot's chunk list for a file unchanged
  since (size, mtime, ctime, inode); the tree it builds, held encoded; the parent
  snapshot read beside it.
- archiver: runs both passes; the second reads, chunks and stores the rest, and packs
  small files together; big files (repository config big_file) in fixed blocks on every
  core (blocks/).
- readerpool / readerproc: the reader worker processes of a big capture (parent side /
  child side): the parent hands them open fds, they read, chunk, hash and compress, the
  parent stays the only writer of the repository.

Imports: blocks, repository, fs, workerproc, progress, model. Never restore or image.
"""
