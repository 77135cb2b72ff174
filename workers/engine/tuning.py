"""The engine's thresholds and tuning constants, in one place.

None of these changes what a snapshot holds or how it reads back (the format's own
constants stay with the format: chunk sizes in a repository's config, packformat.BLOCK,
manifest.MANIFEST_VERSION). They trade memory, threads and processes for speed on the
2-core machines the benchmarks run on (bench/README.md has the figures). Modules read them
as `tuning.NAME` at run time, so a test may change one for a single call.
"""

from __future__ import annotations

# --- reading and writing files ------------------------------------------------------------
READ_RETRIES = 3  # re-reads of a file (or image) that changes while it is read, then a warning
# Seconds an open of a tenant's file waits, retried, for a process holding a lease on it to
# release it (fsutil.open_regular_stat): a cooperative holder does within milliseconds of
# the break the first try starts; one that ignores it held the open for the kernel's
# lease-break-time (45 s by default), per file. Past this the operation fails, retried.
LEASE_WAIT = 1.0
INLINE_MAX = 256 * 1024  # files up to this size (one chunk) go into a capture's tiny packs
# 2, not 3: the bench's rootfs + 300 MiB disk image capture costs ~10 % less CPU (2.16-2.24
# vs 2.43 s, the process tree; zstd is most of it) for 2 % more stored (214.1 vs 209.6
# MiB; restic stores 219.3 MiB of the same data in bench/service.py)
ZSTD_LEVEL = 2
# ... with a hash table of 2^15 entries, not level 2's 2^16 (level 1's is 2^14): zstd over
# what the bench's capture compresses (small-file frames, CDC chunks, the image's blocks,
# one process, alternating x5, load ~15) 1.32-1.36 s vs 1.53-1.54 s of CPU, 215.95 vs
# 214.86 MiB; 2^14: 1.22 s, 218.24 MiB; level 1: 1.27 s, 220.38 MiB (over restic's 219.3)
ZSTD_HASH_LOG = 15
# more new objects than this at a commit: one syncfs instead of an fsync each
FULL_SYNC_AT = 64
# fresh objects reused (stored after the last full sync) that a capture keeps, to judge at
# its commit whether they are all its parent's (durable): past that many, a full sync
REUSED_FRESH_MAX = 65_536

# --- capture --------------------------------------------------------------------------------
CAPTURE_THREADS = 4
CAPTURE_MAX_INFLIGHT = 64  # open file fds handed to the threads or reader processes
# Big captures use reader processes (no GIL); small ones threads (a process takes ~0.1 s).
CAPTURE_PROCESSES = 2
CAPTURE_PROCESS_THRESHOLD = 64 << 20  # bytes of files to read
# Requests (up to 64 files of one directory each, capture/messages.py) queued per reader
# process: keeps both busy and never blocks the parent on send; a reader announces a
# request's files to the kernel (WILLNEED) before reading the first, so on a cold disk their
# reads overlap.
READER_WINDOW = 3
READER_BATCH = 8 << 20  # a reader flushes encoded chunks / progress at least this often
# A file this big (but under the repository's big_file: one reader cuts, hashes and
# compresses it whole) goes to the readers in a request of its own, the biggest first,
# ahead of the other files walked: read where the walk found it (the bench's 48 MiB apt
# list, under /var: walked last) it was the capture's last ~0.3-0.4 s, one core working.
READER_HEAVY = 4 << 20
# a request's files hold at most about this many bytes (one bigger file: a request of its
# own), so the requests left at the end are short on both readers
REQUEST_BYTES = 8 << 20
# a reader sends the results of a request's files (small files' bytes) in frames of about
# this size: the parent handles one while the next is on its way
READER_RESULTS = 256 << 10
READER_SOCKET_BUFFER = 4 << 20  # a reader's result socket send buffer (SO_SNDBUF)
# Each opened file is announced to the kernel (WILLNEED: asynchronous readahead), so the
# files queued for the readers are fetched from disk in parallel, not one read at a time
# (cold rootfs capture 1.63 -> 1.37 s). Bigger files get sequential readahead anyway.
PREFETCH_MAX = 8 << 20
# A walk slower than this per entry (over its last PREFETCH_WINDOW entries) is on a cold
# cache: threads then warm the metadata ahead of it (fs/prefetch.py; a patch restore's
# walk too, patchplan.py). Warm, the bench's rootfs walk takes ~25-30 us an entry with
# the readers' results handled in between (load ~5), cold 150-280 us. A window of 128
# entries, not 512, starts the prefetch ~0.3 s into a cold walk instead of ~0.45 (cold
# rootfs + image, chrt -r 1, alternating x5 at load ~5.3: 1.87 -> 1.56 s medians, faster
# in 5 of 5); a warm walk it starts on by mistake (a stall of ~13 ms) loses little: the
# warm 100k capture with the prefetch forced on 2.98-3.32 s vs off 2.70-3.57 s (x3, load
# 6.7-7.6)
PREFETCH_COLD_US = 100
PREFETCH_WINDOW = 128
PREFETCH_THREADS = 4
PREFETCH_STAT_EVERY = 32  # entries of a directory per lstat (one warms its inode's neighbours)
PREFETCH_FDS = 128  # directory descriptors the prefetch holds at most (the walk needs its own)
TINY_PACK = 32 << 20  # bytes of small files (plaintext) per pack object
# on file://: a pack's compressed frames are held until it is sealed (24 MiB of a 100k-file
# capture's ~57 MiB traced peak at 32 MiB), and a local object costs no request
TINY_PACK_LOCAL = 8 << 20
PACK_MAX_FILES = 16384  # files per pack at most (each one's entry waits for the pack's id)
PACK_SIZE = 32 << 20  # stored bytes of big chunks per pack object (bench/s3.py: see README)
# ... and at most this much plaintext: an image's text-like blocks compress ~5x, and a
# restore's read-ahead holds a pack's frames decoded, so a pack must stay small decoded too
PACK_PLAIN_MAX = 64 << 20
PACK_TAIL = 8 << 20  # one stream (S3): bytes left to read when the open pack is sealed early
PACKS_QUEUED = 2  # sealed packs waiting for the packer thread (bounds memory)

# --- restore --------------------------------------------------------------------------------
RESTORE_THREADS = 4
RESTORE_MAX_INFLIGHT = 64
RESTORE_PROCESSES = 2  # writer processes of a big restore
RESTORE_PROCESS_THRESHOLD = 64 << 20  # bytes of files to write
# A restore keeps a manifest's entries decoded up to this many (~700 bytes each: 70 MB),
# encoded (~190 bytes) above it (repository/lazyentries.py LazyEntries)
DECODED_ENTRIES_MAX = 100_000
FILE_COST = 64 << 10  # a file's fixed cost in bytes, to split work between processes
COPY_BLOCK = 1 << 20  # a live restore's copy of a current file, per read
# files per Written message of a writer process: each send wakes the parent, which may take
# the writer's core (10k-file S3 bench, a writer's 82 sends at 64 files took 0.02-0.03 s on
# a quiet machine, 0.1-0.2 s under load 3-5; at 1,024 files 7-10 sends, 0.003-0.05 s); the
# parent judges a cut from the files reported, so far fewer would make it judge blind
WRITER_BATCH = 256
# a restore writer that finished takes over half of another's rest from this many files on:
# a rest taken over starts with ranged GETs of its own (S3: their first bytes 50-100 ms
# away under load, while the writer whose rest it was streams it already: at 1,024, one
# traced thief ended 70 ms after its victim), and each take-over adds a GET per pack it
# reads (10k-file bench: 9 GETs with none, 11 or 13 with one or two)
RESTORE_STEAL_MIN = 2048
# ... and from a local repository, where a rest taken over costs no request (a frame read
# again at most): the rootfs restore's writers, split by cost, ended 175-380 ms apart with
# ~1,000 files of the slower one's left, never cut at 2,048
RESTORE_STEAL_MIN_LOCAL = 256
# A patch restore is used when at most max(PATCH_MIN, entries / PATCH_FRACTION) entries
# differ; beyond that, rebuilding in staging costs about the same and needs no undo.
PATCH_MIN = 16
PATCH_FRACTION = 5
FLUSH_EVERY = 0.1  # seconds between background syncfs calls while a rebuild writes
# What a restore keeps of the small-file packs it reads (bounded memory):
PACK_CACHE_OBJECTS = 4  # compressed single-frame (older) pack objects
PACK_CACHE_TABLES = 256  # block tables of packs (a few hundred bytes each)
# decoded 1 MiB blocks (in each writer process; a local restore reads on demand through
# them): files are written in about pack order, so 3 hold a member spanning two frames and
# the next. Engine alone, 100k scale tree, restore's peak PSS of its tree (A/B, load
# 1.6-1.9): 8 blocks 127.1 / 121.0 MiB (writers ~36.5 each), 3 blocks 109.5 / 110.1 (~31),
# CPU the same; 32 held 24 MiB more in each writer for nothing
PACK_CACHE_BLOCKS = 3
# A restore into a new tree reads its packs ahead of the writers (packfetch.py):
RESTORE_FETCH_STREAMS = 8  # GETs at once (at least 8 by issue 11)
RESTORE_FETCH_BYTES = 256 << 20  # plaintext of packs being read or not yet written
RESTORE_COALESCE_GAP = 1 << 20  # needed frames this close are read in one GET
# An image restore's read-ahead from S3 (image.py; file:// reads blocks on demand): two
# packs at once, of text-like blocks too (up to PACK_PLAIN_MAX decoded each). At 64 MiB a
# pack of text-like blocks (56 MiB decoded) ran alone: the 256 MiB bench image's 4 GETs
# one after another, 8 alternating restores at load 2.6-3.8 median 0.731 s, 0.604 s at
# 128 (peak RSS ~100-130 MiB either way). RESTORE_FETCH_BYTES would hold a 256 MiB image
# decoded at once (peak RSS 248 MiB on file://, 30 MiB with an object per block)
IMAGE_FETCH_BYTES = 128 << 20

# --- removing trees (the old tree after a swap, leftovers) ------------------------------
REMOVAL_MAX_FDS = 64  # directories held open at once while descending
REMOVAL_ROUNDS = 100  # re-listings of the top of a tree that keeps changing, per pass
REMOVAL_PASSES = 3
JANITOR_RETRY_DELAYS = (1.0, 2.0, 5.0, 15.0, 60.0, 300.0)  # the janitor's, then it gives up

# --- object storage (s3://) -----------------------------------------------------------------
S3_STREAMS = 16  # concurrent uploads (and the HTTP pool's size); at least 8 by the issue
S3_IN_FLIGHT_BYTES = 128 * 1024 * 1024  # uploads queued or running, at most this many bytes
S3_RETRY_FOR = 120.0  # seconds a transient failure is retried before the operation fails
S3_LOCK_POLL_MAX = 10.0  # a capture waiting for a reclaim polls at most this far apart
LIST_CACHE_MAX_AGE = 3600.0  # seconds: rebuild the listing cache at least this often
# A host's cache files of a repository untouched this long (a repository no longer used
# here, or one keyed by an earlier version: a LIST rebuilds it) are removed at a rebuild.
LIST_CACHE_FORGET_AFTER = 30 * 86400.0

# --- images and big files -------------------------------------------------------------------
# Block workers (blocks/pipeline.py): 2 cores, plus reads and writes waiting on the disk. They
# read and write image states and the big files of directory states; which files are big is
# the repository's Config.big_file (64 MiB), a format setting, not a tuning one: it decides
# how those files are cut into chunks.
IMAGE_THREADS = 4
# A directory state's big file is read while the walk and the small files go on (capture/
# bigfiles.py): 2 block threads, not 4, leave the walk thread (Python, the GIL) and the
# reader processes their share; the bench's cold rootfs + 300 MiB image capture, engine
# alone, 1.98-3.17 s vs 2.86-4.26 s with 4 (alternating x3, load ~5.8), CPU 2.23-2.44 vs
# 2.42-2.57 s
BIG_FILE_THREADS = 2
# ... and its blocks read ahead of them by this many threads of their own (O_DIRECT, 1 MiB
# each): a block thread that reads its own block idles while the disk works (traced, the
# cold bench capture's 300 block reads waited 1.3-1.9 s in all, the blocks' hashing and
# compression took 0.7-0.8 s). The 300 MiB image alone in a directory, engine alone, warm,
# chrt -r 1, alternating x6 at load 8-10: 0.85 s (2 ahead: 0.86) vs 1.05 s at 3f30c8c,
# CPU the same (1.06-1.08 s). 2, not 4: as many reads at once as the two block threads
# made before, so a cold capture's small-file reads queue behind no more big-file reads
# than they did (traced at 4, the readers stalled while the image was read); whole rootfs +
# image, cold x6 alternating at load 11, io pressure ~74 %: 2.15 s vs 2.26 at 4 and 2.28 at
# 3f30c8c (all within that noise)
BIG_FILE_READ_AHEAD = 2
# Big files a directory capture holds open ahead of their reads (one thread reads them in
# turn; the walk waits beyond this): a state of thousands (a database's 1 GiB segments)
# opened them all at once and dropped the rest as vanished (EMFILE at the fd limit)
BIG_FILES_OPEN = 16

# --- a worker's operations, each in a forked process (forked.py) ---------------------------
FORKED_POLL = 0.25  # seconds between the parent's should_stop polls while a child runs
# seconds a child asked to stop (cancelled) has to end, then a child stopped by SIGTERM has
# to unwind, then SIGKILL
FORKED_STOP_GRACE = 20.0

# --- progress -------------------------------------------------------------------------------
PROGRESS_INTERVAL = 0.25  # seconds: well under the 1 s promise, cheap enough to ignore
# entries a restore's passes over its tree (the tree check, the patch's plan) go between two
# polls of its should_stop: a million-entry pass takes seconds; one poll a block of 1024,
# cancelled within milliseconds, and no test per entry in the check's loop
POLL_ENTRIES = 1024

# --- bookkeeping ----------------------------------------------------------------------------
# a backend remembers the keys of its last this many stored objects (tests read them to
# prove what was and was not re-written); a list of every key grew for the whole life of a
# long-running worker's cached engine
RECENT_PUT_KEYS = 4096
