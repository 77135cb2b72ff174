"""Blocks: big files and images read and written in fixed blocks, several at a time.

- pipeline: pipelined() (a bounded, in-order thread pipeline), read_blocks() (capture:
  read, hash, compress and store blocks on every core, re-read while the file changes) and
  write_blocks() (restore: fetch, verify and write blocks on every core), O_DIRECT where
  the filesystem allows. Used by image states and by the big files of directory states
  (repository/chunker.py: the same blocks for both).

Imports: repository, fs, progress, model. Never capture, restore or image.
"""
