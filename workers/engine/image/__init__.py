"""Image: a block-device or disk-image state captured and restored in blocks.

- image: capture (zero blocks are holes, unchanged blocks reuse the parent's), restore
  (only differing blocks written, through a redo journal), image_cleanup() (finishes or
  drops a journal a killed restore left), and the bounded in-order block pipeline.

Imports: blocks, repository, fs, progress, model. Never capture or restore.
"""
