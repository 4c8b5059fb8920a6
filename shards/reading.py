"""Shard -> samples through webdataset's own stages, hardened against damaged and hostile tars.

webdataset does the tar work: `gopen` opens the url (local path, pipe:, http(s)), then
`tariterators.tar_file_expander` (the stdlib's tarfile in stream mode) yields members and
`tariterators.group_by_keys` groups them into samples by key (the name up to the first dot).
Every stage gets a `handler=` that reports the error by kind and says what to do next: a damaged
or truncated tar ends its shard (the samples before the damage are kept), a duplicate member is
dropped and the shard goes on. Nothing sleeps, nothing escapes.

What this module adds is the bounds webdataset leaves open:
  * memory: tarfile reads a member's data in one `read(size)` with `size` from the header, so a
    header claiming 100 GB in front of a gzip bomb (or an endless pipe) would be collected in
    full. Shards are decompressed here (so tarfile sees a plain tar) and tarfile reads through
    `Bounded`, which allows at most `max_member_bytes` between two members;
  * time: tarfile skips a member by reading (not seeking) in 10 KiB steps, even past the end of
    the stream; `Bounded` fails the first reads after the end instead of answering b"" forever.
"""
from __future__ import annotations

import bz2
import functools
import gzip
import hashlib
import io
import lzma
from typing import Callable, Iterator, Optional
from urllib.parse import urlparse

from webdataset.gopen import gopen
from webdataset import tariterators
from webdataset.cache import FileCache

# error kinds reported through `on_error` (also the trainer's counter names)
UNREADABLE_SHARD = "unreadable_shard"  # cannot be opened (missing file, failed command, network)
TRUNCATED_SHARD = "truncated_shard"  # damaged or cut tar: the rest of the shard is skipped
OVERSIZED_MEMBER = "oversized_member"  # a member larger than max_member_bytes: rest skipped
DUPLICATE_MEMBER = "duplicate_member"  # a sample with the same extension twice: later one dropped
UNNAMED_MEMBER = "unnamed_member"  # a file whose name has no key or no extension: passed over

MAX_MEMBER_BYTES = 64 << 20  # a pose sample is ~50 KB; a bring-your-own shard's photo a few MB
READ_BUFFER = 1 << 20  # local files: a few large reads per sample, not many 8 KiB ones
# magic bytes as tarfile's "r|*" recognises them
_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bz2"), (b"\xfd7zXZ", "xz"), (b"\x5d\x00\x00\x80", "xz"))

_DECOMPRESSORS = {"gzip": lambda raw: gzip.GzipFile(fileobj=raw, mode="rb"), "bz2": bz2.BZ2File,
                  "xz": lzma.LZMAFile}

OnError = Callable[[str, str], None]


class ShardLimitError(Exception):
    """A member larger than the reader allows (a damaged or hostile size field, or a bomb)."""


class Bounded(io.RawIOBase):
    """A read-only view of `stream` that hands out at most `limit` bytes between two calls to
    `new_member()` and fails the third read after the end (tarfile would otherwise skip a huge
    claimed member by reading empty blocks, millions of times)."""

    EMPTY_READS_ALLOWED = 2

    def __init__(self, stream, limit: int, url: str = "") -> None:
        super().__init__()
        self.stream, self.limit, self.url, self.used, self.empty_reads = stream, limit, url, 0, 0
        self.total = 0  # bytes handed out since the start

    def __repr__(self) -> str:  # webdataset appends "@ <stream>" to the errors it passes on
        return self.url

    def readable(self) -> bool:
        return True

    def new_member(self) -> None:
        self.used = 0

    def read(self, size: int = -1) -> bytes:
        allowed = self.limit - self.used
        data = self.stream.read(size if 0 <= size <= allowed else allowed + 1)
        self.used += len(data)
        self.total += len(data)
        if self.used > self.limit:
            raise ShardLimitError(f"a member needs more than {self.limit} bytes (damaged or hostile size "
                                  f"field, or a decompression bomb)")
        if not data and size != 0:
            self.empty_reads += 1
            if self.empty_reads > self.EMPTY_READS_ALLOWED:
                raise EOFError("the tar stream ends inside a member")
        return data


def _peek(stream, size: int) -> tuple[bytes, object]:
    """The first `size` bytes and a stream that still yields them."""
    peek = getattr(stream, "peek", None)
    if peek is not None:
        return peek(size)[:size], stream
    head = stream.read(size)
    return head, io.BufferedReader(_Prefixed(head, stream), READ_BUFFER)


class _Prefixed(io.RawIOBase):
    """A raw stream with some already-read bytes put back in front."""

    def __init__(self, head: bytes, stream) -> None:
        super().__init__()
        self.head, self.stream = head, stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.head[:len(buffer)] if self.head else self.stream.read(len(buffer))
        self.head = self.head[len(data):] if self.head else b""
        buffer[:len(data)] = data
        return len(data)


def _compression(head: bytes) -> Optional[str]:
    return next((kind for magic, kind in _MAGIC if head.startswith(magic)), None)


def plain_tar(stream):
    """The stream, or a decompressing view of a .tar.gz / .tar.bz2 / .tar.xz one (by magic bytes).
    A compressed stream inside a compressed stream is refused: nothing would bound it."""
    head, stream = _peek(stream, 6)
    kind = _compression(head)
    if kind is None:
        return stream
    inner = io.BufferedReader(_DECOMPRESSORS[kind](stream), READ_BUFFER)
    if _compression(inner.peek(6)[:6]) is not None:
        raise ShardLimitError("a compressed stream inside a compressed shard")
    return inner


def cache_name(url: str) -> str:
    """A cache file name unique to the url (webdataset's default keeps only the file name, and
    train/000000.tar would meet val/000000.tar)."""
    base = urlparse(url).path.rsplit("/", 1)[-1] if "://" in url else url.rsplit("/", 1)[-1].split()[0]
    return f"{hashlib.sha1(url.encode()).hexdigest()[:16]}-{base}"


@functools.lru_cache(maxsize=8)
def _file_cache(directory: str) -> FileCache:
    return FileCache(directory, url_to_name=cache_name)  # download to a temp name, rename, check it is a tar


def open_shard(url: str, cache_dir: str = ""):
    """A local path with a large read buffer; anything else (pipe:, http(s), ...) through gopen,
    or with `cache_dir` through webdataset's FileCache (downloaded once, then read locally)."""
    if "://" not in url and not url.startswith("pipe:"):
        return open(url, "rb", buffering=READ_BUFFER)
    if cache_dir:
        return open(_file_cache(cache_dir).get_file(url), "rb", buffering=READ_BUFFER)
    return gopen(url, "rb", bufsize=READ_BUFFER)


def _kind(error: BaseException, bounded: "Bounded") -> str:
    """Nothing read at all (e.g. curl's empty answer to a 404, whose exit status may come
    later): unreadable; a member too large: oversized; anything else: a damaged tar."""
    if isinstance(error, ShardLimitError):
        return OVERSIZED_MEMBER
    return UNREADABLE_SHARD if bounded.total == 0 else TRUNCATED_SHARD


def _named(files: Iterator[dict], bounded: Bounded, url: str, on_error: OnError) -> Iterator[dict]:
    """Members between the tar stage and the grouping: restart the member budget, report names
    without a key (webdataset's grouping drops them silently). The check is the grouping's
    pattern (base_plus_ext: a key of no dots, a dot, an extension) as string tests."""
    for item in files:
        bounded.new_member()
        if item:
            name = item["fname"]
            base = name[name.rfind("/") + 1:]
            if not base or base[0] == "." or "." not in base:
                on_error(UNNAMED_MEMBER, f"{url}: member {name!r} has no key.extension name")
                continue
        yield item


def iter_samples(url: str, on_error: OnError, max_member_bytes: int = MAX_MEMBER_BYTES,
                 cache_dir: str = "") -> Iterator[dict]:
    """webdataset samples ({'__key__', '__url__', ext: bytes, ...}) of one shard, in order. Every
    problem goes to on_error(kind, detail); iteration then ends (damaged tar) or goes on."""
    try:
        stream = open_shard(url, cache_dir)
    except Exception as error:  # missing file, failed command, network: this shard is lost
        on_error(UNREADABLE_SHARD, f"{url}: {error}")
        return
    try:
        try:
            bounded = Bounded(plain_tar(stream), max_member_bytes, url)
        except ShardLimitError as error:
            on_error(OVERSIZED_MEMBER, f"{url}: {error}")
            return
        except Exception as error:  # e.g. curl's exit status on a missing url: nothing was read
            on_error(UNREADABLE_SHARD, f"{url}: {error}")
            return

        def stop_shard(error: Exception) -> bool:  # handler: report, then end this shard
            on_error(_kind(error, bounded), f"{error.args[0] if error.args else error!r}; rest of the shard skipped")
            return False

        def drop_member(error: Exception) -> bool:  # handler: report, keep going
            on_error(DUPLICATE_MEMBER, f"{url}: {error.args[0] if error.args else error!r}")
            return True

        files = tariterators.tar_file_expander([{"url": url, "stream": bounded}], handler=stop_shard)
        yield from tariterators.group_by_keys(_named(files, bounded, url, on_error), handler=drop_member)
    finally:
        try:
            stream.close()
        except Exception:  # a pipe closed early may report its exit status; nothing to do
            pass
