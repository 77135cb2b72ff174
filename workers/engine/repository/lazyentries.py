"""A directory manifest's entries as a restore holds them: decoded whole, once, when few
(up to tuning.DECODED_ENTRIES_MAX), else left encoded and each decoded when used
(LazyEntries); and the encoded entries a restore's writer process is sent (decode_lazily).
The format itself is manifest.py's."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import overload

import msgspec
import zstandard

from .. import gcpause, tuning
from . import dirbody
from .manifest import (
    DirBody,
    Entry,
    Header,
    RawDirBody,
    directory_body,
    encode_entry,
    share_pack_ids,
)

_lazy_dec = msgspec.msgpack.Decoder(RawDirBody)
_entry_dec = msgspec.msgpack.Decoder(Entry)
_dir_dec = msgspec.msgpack.Decoder(DirBody)


def decode_lazily(data: bytes) -> tuple[Header, list[msgspec.Raw]]:
    """A directory manifest whose entries stay encoded until manifest.entry() decodes one: for a
    process that needs a share of them (a restore's writer process), ~190 bytes per entry
    held (the body's msgpack and one Raw each) instead of ~700 for a decoded Entry."""
    header, b = directory_body(data)
    return header, _lazy_dec.decode(zstandard.ZstdDecompressor().decompress(b)).entries


def decode_entries(data: bytes) -> tuple[Header, LazyEntries]:
    """A directory manifest for a restore: up to tuning.DECODED_ENTRIES_MAX entries
    decoded now, whole, in one msgspec call (one call per entry from a Python loop, and
    the msgspec.Raw of each beside, cost a 6,768-entry patch restore ~8 M instructions
    more under callgrind); more stay encoded (decode_lazily), each decoded when used."""
    header, b = directory_body(data)
    body = zstandard.ZstdDecompressor().decompress(b)
    n = dirbody.entry_count(body)
    raws = None
    if n is None:  # not laid out as dirbody.encode_dir_body writes it: count them by decoding
        raws = _lazy_dec.decode(body).entries
        n = len(raws)
    if n > tuning.DECODED_ENTRIES_MAX:
        return header, LazyEntries(_lazy_dec.decode(body).entries if raws is None else raws)
    with gcpause.paused():
        decoded = _dir_dec.decode(body).entries
    share_pack_ids(decoded)
    return header, LazyEntries(raws, decoded)


class LazyEntries(Sequence[Entry]):
    """A directory manifest's entries, each decoded when it is asked for (decode_lazily):
    a restore planning a million files holds ~190 bytes an entry, not ~700. Up to
    tuning.DECODED_ENTRIES_MAX entries they are decoded once, on first use, and kept: a
    restore walks its entries four or five times (check, plan, write, record), and decoding
    each anew cost a small restore more than the memory it saved (bench/engine.py, the 1 %-
    changed rootfs: 33,854 decodes for 6,767 entries). Above it, every access decodes anew:
    hold on to what is used more than once."""

    def __init__(self, raws: list[msgspec.Raw] | None,
                 decoded: list[Entry] | None = None) -> None:
        # raws None: only `decoded` (decode_entries), raw(i) encodes entry i when asked
        self._raws: list[msgspec.Raw] = [] if raws is None else raws
        self._decoded = decoded
        self._len = len(decoded) if raws is None and decoded is not None else len(self._raws)

    def _kept(self) -> list[Entry] | None:
        """Every entry decoded, when there are few enough to keep them so (unless given
        decoded, the first call decodes: a DecodeError comes from the first use)."""
        if self._decoded is None and self._len <= tuning.DECODED_ENTRIES_MAX:
            self._decoded = [_entry_dec.decode(r) for r in self._raws]
            share_pack_ids(self._decoded)
        return self._decoded

    def listed(self) -> Sequence[Entry]:
        """The entries as a plain list when they are kept decoded (indexing and iterating
        it costs no Python call per entry, as self[i] and iter(self) do), else self."""
        kept = self._kept()
        return self if kept is None else kept

    def __len__(self) -> int:
        return self._len

    @overload
    def __getitem__(self, i: int) -> Entry: ...
    @overload
    def __getitem__(self, i: slice) -> list[Entry]: ...
    def __getitem__(self, i: int | slice) -> Entry | list[Entry]:
        kept = self._kept()
        if kept is not None:
            return kept[i]
        if isinstance(i, slice):
            return [_entry_dec.decode(r) for r in self._raws[i]]
        return _entry_dec.decode(self._raws[i])

    def __iter__(self) -> Iterator[Entry]:
        kept = self._kept()  # no generator: iterating kept entries is a list's iteration
        return iter(kept) if kept is not None else map(_entry_dec.decode, self._raws)

    def raw(self, i: int) -> msgspec.Raw:
        """Entry i still encoded (encoded again if only its decoded form is held)."""
        if self._raws or self._decoded is None:
            return self._raws[i]
        return msgspec.Raw(encode_entry(self._decoded[i]))

    def release(self) -> None:
        """The caller is done with them: the decompressed body goes now, not when the last
        holder of this object lets go of it (a million entries: ~130 MB)."""
        self._raws = []
        self._decoded = None
        self._len = 0
