"""A new tree's entries sorted out for TreeWriter.build_fresh(): its directories, the
files for the writer processes, the big files for the restoring process, hard links and
special entries. Made by visiting each entry once; for a restore whose writers were
started for a new state, on the tree check's pass (treecheck.check_tree), the pass a
million entries (each decoded anew above tuning.DECODED_ENTRIES_MAX) cost once more
otherwise (300k tree: ~0.6-1.1 s at load 3-5, before any writer wrote)."""

from __future__ import annotations

from array import array

from .. import tuning
from ..repository.chunker import fixed_block
from ..repository.manifest import DIR, FILE, HARDLINK, Entry
from ..repository.repository import Repository
from .shares import Files, first_pack


class FreshPlan:
    def __init__(self, repo: Repository, root: Entry) -> None:
        self.dirs: list[Entry] = [root]  # parents first, as in the manifest
        self.files = Files()  # the writer processes'
        self.links: dict[bytes, list[Entry]] = {}  # target -> its hard links
        self.specials = array("q")  # indexes: a million-entry tree holds no Entry for each
        self.big = array("q")  # the big files written by the parent (local repository)
        self._local = not repo.backend.remote
        self._config = repo.config

    def visit(self, idx: int, e: Entry) -> None:
        """Entry idx (not the root), in manifest order."""
        if e.kind == DIR:
            self.dirs.append(e)
        elif e.kind == FILE:
            if self._local and not e.pack and fixed_block(self._config, e.size):
                self.big.append(idx)
            else:
                self.files.add(idx, e.size + tuning.FILE_COST, first_pack(e))
        elif e.kind == HARDLINK:
            self.links.setdefault(e.target, []).append(e)
        else:
            self.specials.append(idx)
