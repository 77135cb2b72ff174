"""Worker-process plumbing shared by the capture readers and the restore writers.

- process: WorkerProcess (a child started with a request socket and a result socket) and
  start_workers() (all or none).
- frames: the one frame format on a result socket (4-byte big-endian length + msgpack).

Imports: nothing of the engine.
"""
