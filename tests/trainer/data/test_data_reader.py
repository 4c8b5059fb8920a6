"""The loader's tar reading (webdataset's stages via shards.reading) on tars written by the
stdlib in every format, compressed, cut and damaged."""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile

import pytest

from trainer.data.plan import Segment
from trainer.data.reader import ErrorCounter, read_segments

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


def _grouped(entries: list[tuple[str, bytes]]) -> list[tuple[str, dict[str, bytes]]]:
    """What a reader must yield: members grouped by the name up to the first dot (of the file name)."""
    out: list[tuple[str, dict[str, bytes]]] = []
    for name, data in entries:
        slash = name.rfind("/") + 1
        key, _, ext = name[slash:].partition(".")
        if not out or out[-1][0] != name[:slash] + key:
            out.append((name[:slash] + key, {}))
        out[-1][1][ext] = data
    return out


def _read(tmp_path, blob: bytes, name: str = "shard.tar") -> tuple[list[tuple[str, dict]], ErrorCounter]:
    path = tmp_path / name
    path.write_bytes(blob)
    errors = ErrorCounter()
    return [(s.key, s.members) for s in read_segments([Segment(str(path))], errors)], errors


ENTRIES = [("s-0.jpg", b"\xff\xd8" + bytes(range(256)) * 3), ("s-0.json", b"{}"), ("s-1.jpg", b""),
           ("x" * 95 + ".json", b"100 characters"), ("d\u00e9j\u00e0-2.json", "caf\u00e9".encode())]


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_regular_members_grouped_in_order_with_their_bytes(tmp_path, fmt):
    entries = list(ENTRIES)
    if fmt != tarfile.USTAR_FORMAT:  # ustar cannot hold a 163-character name without a '/' split
        entries.append((LONG, b"long name"))
    samples, errors = _read(tmp_path, _tar(entries, fmt))
    assert samples == _grouped(entries) and not any(errors.counts.values())


def test_ustar_prefix_field_joins_the_path(tmp_path):
    name = "a" * 80 + "/" + "b" * 60 + ".jpg"  # > 100 characters: split into prefix + name
    assert _read(tmp_path, _tar([(name, b"data")], tarfile.USTAR_FORMAT))[0] == _grouped([(name, b"data")])


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress, lzma.compress])
def test_compressed_shards_are_read_transparently(tmp_path, compress):
    assert _read(tmp_path, compress(_tar(ENTRIES, tarfile.USTAR_FORMAT)))[0] == _grouped(ENTRIES)


def test_truncated_shard_keeps_the_samples_before_the_cut_and_counts_it(tmp_path):
    blob = _tar(ENTRIES, tarfile.USTAR_FORMAT, with_directory=False)
    samples, errors = _read(tmp_path, blob[:512 + 1024 + 512 + 1])  # inside the second member's data
    assert samples == [("s-0", {"jpg": ENTRIES[0][1]})]  # the cut member is gone
    assert errors.counts["truncated_shard"] == 1


def test_damaged_header_or_non_tar_is_counted_not_garbage(tmp_path):
    blob = bytearray(_tar(ENTRIES, tarfile.USTAR_FORMAT, with_directory=False))
    blob[10] ^= 0x55  # the first header's name: its checksum no longer matches
    samples, errors = _read(tmp_path, bytes(blob))
    assert samples == [] and errors.counts["truncated_shard"] == 1
    samples, errors = _read(tmp_path, b"this is not a tar file at all" * 40)
    assert samples == [] and errors.counts["truncated_shard"] == 1


def test_missing_end_of_archive_blocks_still_ends_cleanly(tmp_path):
    blob = _tar(ENTRIES, tarfile.USTAR_FORMAT, with_directory=False)
    end = blob.index(bytes(1024), 512)  # strip the end-of-archive zeros (and tarfile's record padding)
    while end % 512:
        end += 1
    samples, errors = _read(tmp_path, blob[:end])
    assert samples == _grouped(ENTRIES) and not any(errors.counts.values())


def test_segments_skip_take_and_count_a_damaged_shard(tmp_path):
    good = tmp_path / "good.tar"
    good.write_bytes(_tar(ENTRIES[:3], tarfile.PAX_FORMAT))
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(gzip.compress(_tar(ENTRIES[:3], tarfile.USTAR_FORMAT))[:300])  # cut gzip stream
    errors = ErrorCounter()
    samples = list(read_segments([Segment(str(good), 1, 1), Segment(str(good)), Segment(str(bad), 0, 2)], errors))
    assert [(s.key, sorted(s.members)) for s in samples] == [("s-1", ["jpg"]), ("s-0", ["jpg", "json"]),
                                                            ("s-1", ["jpg"])]
    assert errors.counts["truncated_shard"] + errors.counts["unreadable_shard"] == 1
    assert errors.counts["short_shard_samples"] == 2  # the manifest promised 2 samples of bad.tar.gz
