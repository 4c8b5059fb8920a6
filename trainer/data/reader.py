"""Stage 5: tar shards -> raw samples, with bad data counted and logged at a limited rate.

Shards are streamed (webdataset's gopen opens local paths, pipe: and urls) through a small
tar parser of our own: the stdlib's tarfile builds a TarInfo object per member, 75 us a sample
(jpg + json, 384 px crops) against 31 for this one, which reads a 512-byte header, checks its
checksum and takes the data (ustar, GNU long names and pax path/size records are understood).
Members are grouped by key (the name up to the first dot, as webdataset does). A shard that
cannot be opened, is truncated or has a damaged header ends that shard: the samples read so far
are kept, the rest is skipped and counted. Nothing ever sleeps.
"""
from __future__ import annotations

import bz2
import gzip
import io
import logging
import lzma
import time
from contextlib import closing
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional

from webdataset.gopen import gopen

from .plan import Segment
from .sources import DataError

log = logging.getLogger("trainer.data")

# counter names, also the keys of a batch's 'data_errors'
CORRUPT_IMAGE = "corrupt_image"
CORRUPT_JSON = "corrupt_json"
MISSING_MEMBER = "missing_member"
TRUNCATED_SHARD = "truncated_shard"
UNREADABLE_SHARD = "unreadable_shard"
SHORT_SHARD = "short_shard_samples"  # samples a manifest promised that the shard did not hold
REPLACED = "replaced_samples"  # training positions filled with another sample (counts stay equal)
ERROR_KINDS = (CORRUPT_IMAGE, CORRUPT_JSON, MISSING_MEMBER, TRUNCATED_SHARD, UNREADABLE_SHARD,
               SHORT_SHARD, REPLACED)
SUMMARY_EVERY_S = 60.0


@dataclass
class ErrorCounter:
    """Counts per kind; the first `max_logged` events are logged one by one, after that a summary
    at most once a minute (a clock comparison, never a sleep)."""

    max_logged: int = 10
    counts: dict[str, int] = field(default_factory=lambda: {k: 0 for k in ERROR_KINDS})
    _logged: int = 0
    _last_summary: float = 0.0

    def record(self, kind: str, detail: str, amount: int = 1) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + amount
        if self._logged < self.max_logged:
            self._logged += 1
            suffix = " (further data errors of this worker are only counted)" if self._logged == self.max_logged else ""
            log.warning("data: %s: %s%s", kind, detail, suffix)
        elif time.monotonic() - self._last_summary > SUMMARY_EVERY_S:
            self._last_summary = time.monotonic()
            log.warning("data errors so far in this worker: %s",
                        {k: v for k, v in self.counts.items() if v})

    def snapshot(self) -> dict[str, int]:
        return dict(self.counts)


@dataclass
class RawSample:
    key: str
    members: dict[str, bytes]  # extension -> bytes ('jpg', 'json', ...)
    url: str


BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)
# read buffer of shard files and pipes: a sample's members in a few large reads, not many 8 KiB ones
READ_BUFFER = 1 << 20
_REGULAR = (b"0", b"\0", b"7")  # file, old-style file, contiguous file
_META = (b"L", b"K", b"x", b"g")  # GNU long name / link, pax extended / global header
_COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bz2", b"\xfd7zXZ\x00": "xz"}


class TarFormatError(Exception):
    """A tar stream that ends early or holds a damaged header."""


def _read_exactly(stream, size: int) -> bytes:
    """`size` bytes (a pipe may deliver less per read); TarFormatError at a premature end."""
    data = stream.read(size)
    if len(data) == size:
        return data
    parts = [data]
    got = len(data)
    while got < size:
        more = stream.read(size - got)
        if not more:
            raise TarFormatError(f"stream ends {size - got} bytes into a {size}-byte read")
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _number(field: bytes) -> int:
    """A numeric header field: NUL/space-terminated octal, or GNU base-256 (high bit set)."""
    if field[:1] and field[0] & 0x80:
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * len(field) - 8)) if field[0] & 0x40 else value
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise TarFormatError(f"bad number {field!r} in a tar header") from None


def _check_header(header: bytes) -> None:
    stored = _number(header[148:156])
    unsigned = sum(header) - sum(header[148:156]) + 8 * 32  # the checksum field counts as spaces
    if stored != unsigned:
        signed = unsigned - 2 * sum(b for b in header if b > 127)  # what some old tars wrote
        if stored != signed:
            raise TarFormatError("tar header checksum mismatch (damaged, or not a tar)")


class _Prefixed:
    """A stream with some already-read bytes put back in front."""

    def __init__(self, head: bytes, stream) -> None:
        self.head, self.stream = head, stream

    def read(self, size: int = -1) -> bytes:
        if not self.head:
            return self.stream.read(size)
        if size < 0:
            data, self.head = self.head + self.stream.read(), b""
            return data
        data, self.head = self.head[:size], self.head[size:]
        return data if len(data) == size else data + self.stream.read(size - len(data))


def uncompressed(stream):
    """The stream itself, or a decompressing view of it for .tar.gz / .tar.bz2 / .tar.xz shards
    (recognised by their magic bytes, as tarfile's "r|*" did)."""
    head = stream.read(6)
    seekable = getattr(stream, "seekable", lambda: False)()
    if seekable and not any(head.startswith(magic) for magic in _COMPRESSED):
        stream.seek(-len(head), io.SEEK_CUR)  # a local tar: read directly, no wrapper in the way
        return stream
    wrapped = _Prefixed(head, stream)
    for magic, kind in _COMPRESSED.items():
        if head.startswith(magic):
            if kind == "gzip":
                return gzip.GzipFile(fileobj=wrapped)
            return bz2.BZ2File(wrapped) if kind == "bz2" else lzma.LZMAFile(wrapped)
    return wrapped


def _pax_records(data: bytes) -> dict[str, str]:
    """'<length> <key>=<value>\\n' records of a pax extended header."""
    records, at = {}, 0
    while at < len(data) and data[at:at + 1] != b"\0":
        space = data.index(b" ", at)
        length = int(data[at:space])
        key, _, value = data[space + 1:at + length - 1].partition(b"=")
        records[key.decode("utf-8")] = value.decode("utf-8", "surrogateescape")
        at += length
    return records


def tar_members(stream) -> Iterator[tuple[str, bytes]]:
    """(name, data) of the regular files of a tar stream, in order; directories, links and
    other entries are passed over. Ends at the end-of-archive block (or a clean end of stream
    between members); raises TarFormatError for a truncated stream or a damaged header."""
    long_name: Optional[str] = None
    pax: dict[str, str] = {}
    while True:
        header = stream.read(BLOCK)
        if not header or header == _ZERO_BLOCK:
            return
        if len(header) < BLOCK:
            header += _read_exactly(stream, BLOCK - len(header))
        _check_header(header)
        kind = header[156:157]
        size = int(pax["size"]) if "size" in pax and kind not in _META else _number(header[124:136])
        padded = size + -size % BLOCK
        data = _read_exactly(stream, padded)  # data and padding in one read
        if padded != size:
            data = data[:size]
        if kind in _REGULAR:
            name = pax.get("path") or long_name
            if name is None:
                name = header[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                if header[257:262] == b"ustar" and header[345]:
                    prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                    name = f"{prefix}/{name}"
            yield name, data
        if kind == b"L":
            long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        elif kind == b"x":
            try:
                pax = _pax_records(data)
            except ValueError:
                raise TarFormatError("damaged pax header") from None
        elif kind != b"g":  # a global pax header changes nothing we use
            long_name, pax = None, {}


def _split_name(name: str) -> tuple[str, str]:
    """'dir/key.ext.more' -> ('dir/key', 'ext.more'), the extension lower-cased."""
    slash = name.rfind("/") + 1
    key, _, extension = name[slash:].partition(".")
    return name[:slash] + key, extension.lower()


def shard_samples(url: str, errors: ErrorCounter) -> Iterator[RawSample]:
    """Samples of one shard; stops quietly at the end, or counted at an unreadable/truncated one."""
    try:
        stream = gopen(url, "rb", bufsize=READ_BUFFER)
    except Exception as err:  # missing file, failed command, network: one shard lost, keep going
        errors.record(UNREADABLE_SHARD, f"{url}: {err}")
        return
    current: Optional[RawSample] = None
    try:
        for name, data in tar_members(uncompressed(stream)):
            key, extension = _split_name(name)
            if key.startswith("__") or not extension:
                continue
            if current is not None and key != current.key:
                yield current
                current = None
            if current is None:
                current = RawSample(key, {}, url)
            current.members[extension] = data
        if current is not None:
            yield current
    except (TarFormatError, EOFError, OSError, ValueError, lzma.LZMAError) as err:
        # the unfinished group at the cut is dropped with the rest of the shard
        errors.record(TRUNCATED_SHARD, f"{url}: {err}; rest of the shard skipped")
    finally:
        try:
            stream.close()
        except Exception:  # a pipe closed early may report its exit status; nothing to do
            pass


def read_segments(segments: Iterable[Segment], errors: ErrorCounter,
                  max_empty_in_a_row: Optional[int] = None) -> Iterator[RawSample]:
    """Raw samples of the segments in order, honouring each segment's skip/take. With an endless
    (resampled) segment list, `max_empty_in_a_row` shards without a sample end it with an error
    instead of looping forever."""
    empty_in_a_row = 0
    for segment in segments:
        produced = 0
        # closing(): leaving a shard early must close its file or pipe now, not at garbage collection
        with closing(shard_samples(segment.url, errors)) as shard:
            for index, sample in enumerate(shard):
                if index < segment.skip:
                    continue
                produced += 1
                yield sample
                if segment.take is not None and produced >= segment.take:
                    break
        empty_in_a_row = 0 if produced else empty_in_a_row + 1
        if max_empty_in_a_row is not None and empty_in_a_row >= max_empty_in_a_row:
            raise DataError(f"{empty_in_a_row} shards in a row gave no readable sample (last: "
                            f"{segment.url}): the training shards are unreadable")
        if segment.take is not None and produced < segment.take:
            errors.record(SHORT_SHARD, f"{segment.url}: {segment.take - produced} samples of the "
                          f"manifest's count missing", amount=segment.take - produced)
