"""The data pipeline's own tar parser against tars written by the stdlib in every format."""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile

import pytest

from trainer.data.reader import ErrorCounter, TarFormatError, read_segments, tar_members, uncompressed
from trainer.data.plan import Segment

LONG = "deep/" * 30 + "sample-1.json"  # 163 characters: needs a GNU long name or pax path


def _tar(entries: list[tuple[str, bytes]], fmt: int, with_directory: bool = True) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        if with_directory:
            info = tarfile.TarInfo("deep")
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("a-link")
        link.type, link.linkname = tarfile.SYMTYPE, "s-0.jpg"
        tar.addfile(link)
    return buffer.getvalue()


def _members(blob: bytes) -> list[tuple[str, bytes]]:
    return list(tar_members(uncompressed(io.BytesIO(blob))))


ENTRIES = [("s-0.jpg", b"\xff\xd8" + bytes(range(256)) * 3), ("s-0.json", b"{}"), ("s-1.jpg", b""),
           ("x" * 95 + ".json", b"100 characters"), ("d\u00e9j\u00e0-2.json", "caf\u00e9".encode())]


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_regular_members_in_order_with_their_bytes(fmt):
    entries = list(ENTRIES)
    if fmt != tarfile.USTAR_FORMAT:  # ustar cannot hold a 163-character name without a '/' split
        entries.append((LONG, b"long name"))
    assert _members(_tar(entries, fmt)) == entries


def test_ustar_prefix_field_joins_the_path():
    name = "a" * 80 + "/" + "b" * 60 + ".jpg"  # > 100 characters: split into prefix + name
    assert _members(_tar([(name, b"data")], tarfile.USTAR_FORMAT)) == [(name, b"data")]


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress, lzma.compress])
def test_compressed_shards_are_read_transparently(compress):
    blob = _tar(ENTRIES, tarfile.USTAR_FORMAT)
    assert _members(compress(blob)) == ENTRIES


def test_truncated_stream_raises_after_the_complete_members():
    blob = _tar(ENTRIES, tarfile.USTAR_FORMAT, with_directory=False)
    cut = blob[:512 + 1024 + 512 + 300]  # inside the second member's data
    reader = tar_members(uncompressed(io.BytesIO(cut)))
    assert next(reader)[0] == "s-0.jpg"
    with pytest.raises(TarFormatError):
        next(reader)


def test_damaged_header_is_an_error_not_garbage():
    blob = bytearray(_tar(ENTRIES, tarfile.USTAR_FORMAT, with_directory=False))
    blob[512 + 1024 + 10] ^= 0x55  # the second header's name
    with pytest.raises(TarFormatError, match="checksum"):
        _members(bytes(blob))
    with pytest.raises(TarFormatError):
        _members(b"this is not a tar file at all" * 40)


def test_missing_end_of_archive_blocks_still_ends_cleanly():
    blob = _tar(ENTRIES, tarfile.USTAR_FORMAT, with_directory=False)
    end = blob.index(bytes(1024), 512)  # strip the end-of-archive zeros (and tarfile's record padding)
    while end % 512:
        end += 1
    assert _members(blob[:end])[0][0] == "s-0.jpg"


def test_shards_group_members_by_key_and_count_a_damaged_one(tmp_path):
    good = tmp_path / "good.tar"
    good.write_bytes(_tar(ENTRIES[:3], tarfile.PAX_FORMAT))
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(gzip.compress(_tar(ENTRIES[:3], tarfile.USTAR_FORMAT))[:300])  # cut gzip stream
    errors = ErrorCounter()
    samples = list(read_segments([Segment(str(good)), Segment(str(bad))], errors))
    assert [(s.key, sorted(s.members)) for s in samples[:2]] == [("s-0", ["jpg", "json"]), ("s-1", ["jpg"])]
    assert errors.counts["truncated_shard"] == 1
