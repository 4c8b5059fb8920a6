"""Damaged and hostile variants of a real shard, for the fuzz tests (shards/ and trainer/data/).

`cases(blob, n, seed)` yields (name, bytes): the named cases first (each a known way to hang,
crash or exhaust a tar reader), then seeded random ones: byte flips in headers (with the header
checksum left wrong, or recomputed so that the damaged fields are believed), byte flips in the
data, truncation at random offsets.
"""
from __future__ import annotations

import functools
import gzip
import io
import random
import tarfile
import zlib
from typing import Iterator

BLOCK = 512
GB = 1 << 30


def layout(blob: bytes) -> list[tuple[int, int, int]]:
    """(header offset, data offset, size) of every member, from the stdlib's tarfile."""
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        return [(m.offset, m.offset_data, m.size) for m in tar.getmembers()]


def with_checksum(header: bytearray) -> bytes:
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


def header(name: str, size: int, kind: bytes = b"0", size_field: bytes | None = None) -> bytes:
    """A ustar header; `size_field` (12 bytes) overrides the size as written."""
    h = bytearray(BLOCK)
    h[0:len(name)] = name.encode()
    h[100:108] = b"0000444\0"
    h[108:116] = h[116:124] = b"0000000\0"
    h[124:136] = size_field if size_field is not None else b"%011o\0" % size
    h[136:148] = b"00000000000\0"
    h[156:157] = kind
    h[257:265] = b"ustar\x0000"
    return with_checksum(h)


def member(name: str, data: bytes, kind: bytes = b"0") -> bytes:
    return header(name, len(data), kind) + data + bytes(-len(data) % BLOCK)


def pax(records: bytes) -> bytes:
    """A pax extended header carrying raw `records` (lengths as given, right or wrong)."""
    return member("././@PaxHeader", records, b"x")


def end() -> bytes:
    return bytes(2 * BLOCK)


def zeros_gzip(size: int) -> bytes:
    """`size` zero bytes, gzip-compressed (about 1000:1)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = bytes(1 << 20)
    parts = [compressor.compress(chunk) for _ in range(size >> 20)]
    return b"".join(parts) + compressor.flush()


@functools.lru_cache(maxsize=4)
def gzip_bomb(claimed: int, real: int) -> bytes:
    """A .tar.gz whose one member's header claims `claimed` bytes, followed by `real` zeros."""
    head = gzip.compress(header("bomb-1.jpg", claimed))
    return head + zeros_gzip(real)  # two gzip members: readers take them as one stream


def named_cases(blob: bytes) -> Iterator[tuple[str, bytes]]:
    first, second = layout(blob)[0], layout(blob)[1]
    body = blob[:layout(blob)[-1][1] + layout(blob)[-1][2] + -layout(blob)[-1][2] % BLOCK]
    jpg = blob[first[1]:first[1] + first[2]]
    yield "pax-zero-length-record", pax(b"0 path=x\n" + bytes(20)) + member("k-1.jpg", jpg) + end()
    yield "pax-negative-length-record", pax(b"-5 path=x\n") + member("k-1.jpg", jpg) + end()
    yield "pax-huge-length-record", pax(b"99999999999 path=x\n") + member("k-1.jpg", jpg) + end()
    yield "pax-non-numeric-length", pax(b"ab path=x\n") + member("k-1.jpg", jpg) + end()
    yield "pax-size-100GB", pax(b"21 size=107374182400\n") + member("k-1.jpg", jpg) + end()
    yield "pax-size-negative", pax(b"13 size=-400\n") + member("k-1.jpg", jpg) + end()
    yield "member-claims-8GB", body[:second[0]] + header("k-2.jpg", 0, size_field=b"77777777777\0") + jpg
    yield "member-claims-100GB-base256", body[:second[0]] + header(
        "k-2.jpg", 0, size_field=b"\x80" + (100 * GB).to_bytes(11, "big")) + jpg + end()
    yield "directory-claims-100GB", header("dir/", 0, b"5", b"\x80" + (100 * GB).to_bytes(11, "big")) + body
    yield "unknown-type-claims-8GB", header("k-0.xyz", 0, b"Z", b"77777777777\0") + body
    yield "gzip-bomb-member-claims-100GB", gzip_bomb(100 * GB, 96 << 20)
    yield "gzip-nested", gzip.compress(gzip.compress(body + end()))
    yield "gzip-truncated", gzip.compress(body + end())[:len(body) // 3]
    yield "gzip-garbage-after-magic", b"\x1f\x8b\x08\x00" + bytes(range(256)) * 4
    yield "duplicate-member", body[:second[0]] + blob[first[0]:second[0]] + body[second[0]:] + end()
    yield "same-key-twice-apart", body + body[:second[0]] + end()
    yield "empty-key", member(".jpg", jpg) + member(".json", b"{}") + body + end()
    yield "no-extension", member("justakey", jpg) + body + end()
    yield "empty-file", b""
    yield "only-zero-blocks", bytes(20 * BLOCK)
    yield "non-tar-random", random.Random(5).randbytes(20000)
    yield "non-tar-jpeg", jpg
    yield "gnu-sparse-at-end", header("k-9.jpg", 10, b"S")
    yield "long-name-huge", member("././@LongLink", b"n" * 70000, b"L") + body + end()


def random_cases(blob: bytes, count: int, seed: int) -> Iterator[tuple[str, bytes]]:
    rng = random.Random(seed)
    headers = [offset for offset, _, _ in layout(blob)]
    datas = [(offset, size) for _, offset, size in layout(blob) if size]
    for number in range(count):
        kind = number % 4
        data = bytearray(blob)
        if kind in (0, 1):  # header flips: checksum left wrong (0) or recomputed (1)
            at = rng.choice(headers)
            for _ in range(rng.randint(1, 4)):
                data[at + rng.randrange(BLOCK)] = rng.randrange(256)
            if kind == 1:
                data[at:at + BLOCK] = with_checksum(data[at:at + BLOCK])
            name = "header-flip" if kind == 0 else "header-flip-checksummed"
        elif kind == 2:
            offset, size = rng.choice(datas)
            for _ in range(rng.randint(1, 8)):
                data[offset + rng.randrange(size)] ^= 1 << rng.randrange(8)
            name = "data-flip"
        else:
            data = data[:rng.randrange(len(blob))]
            name = "truncated"
        yield f"{name}-{number}", bytes(data)


def cases(blob: bytes, count: int, seed: int = 0) -> Iterator[tuple[str, bytes]]:
    named = list(named_cases(blob))
    yield from named
    yield from random_cases(blob, max(0, count - len(named)), seed)
