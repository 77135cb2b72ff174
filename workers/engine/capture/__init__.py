"""Capture: a directory state read into the repository as one snapshot's manifest.

- archiver: runs both passes; the second reads, chunks and stores the files the first
  left to read, and packs small files together.
- walk: the first pass, the walk through O_NOFOLLOW directory fds (never a symlink, a
  device or a FIFO), which reuses the parent snapshot's chunk list for a file unchanged
  since (size, mtime, ctime, inode).
- tree: the tree the walk builds, held encoded until each entry is final.
- parent: the parent snapshot, read beside the walk one entry at a time.
- threadreader: a small capture's files read by a thread pool.
- bigfiles: big files (repository config big_file) read in fixed blocks on every core
  (blocks/) once the walk is over.
- readerpool / readerproc: the reader worker processes of a big capture (parent side /
  child side): the parent hands them open fds, they read, chunk, hash and compress, the
  parent stays the only writer of the repository.

Imports: blocks, repository, fs, workerproc, progress, model. Never restore or image.
"""
