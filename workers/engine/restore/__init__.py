"""Restore: a directory state made equal to a snapshot, atomically or under an undo journal.

- restorer: the patch-or-rebuild decision, the rebuild in staging and its swap, and the
  trusted record of what was written (statecache) for the next restore.
- treewriter: TreeWriter, which creates and fills a snapshot's entries in a directory of
  our own (staging, or a patch's work directory), every chunk verified; used by the
  rebuild, the patch and the writer processes; filewriter: its FileWriter base, which
  writes one file (or links or copies a proven current one) with its metadata.
- patchplan / patch / patchjournal: the patch: what must change (plan), doing it with
  renames only (apply), and the undo journal with undo() (journal).
- staging: the rebuild's swap (renameat2 EXCHANGE, or a journaled rename pair) and the
  background flusher.
- recovery: cleanup() of what a killed restore left (rolls a swap forward, undoes an
  uncommitted patch, removes leftovers); run before every restore, capture and recover().
- reuse / statecache: proving a current file already holds an entry's content, and the
  per-state record of inodes a restore wrote.
- writerpool / writerproc / messages: the writer worker processes of a big restore
  (parent side / child side / what they send each other); shares / freshplan: their
  shares, and a new tree's entries sorted out for them on the tree check's pass.
- metadata: special files and directories' metadata, as a restore creates them.

Imports: blocks, repository, fs, workerproc, progress, model. Never capture or image.
"""
