"""Stage 1: shard list. A location string -> shard urls and, where known, samples per shard.

Accepted locations:
  * a shard directory written by `python -m shards` (its manifest.json gives the shards and the
    exact sample counts: needed for the exact per-epoch partition and for evaluation);
  * a brace pattern (`/data/train-{000000..000099}.tar`) or a glob (`/data/*.tar`) of local
    files: counts come from a manifest.json next to them when it lists every file;
  * http(s):// and other urls, and `pipe:COMMAND`s (e.g. `pipe:aws s3 cp s3://b/t/{000000..000099}.tar -`),
    with braces; webdataset's gopen opens them. The manifest is read from the same place: the
    first url with its shard file name replaced by manifest.json (a url next to the tars, or
    the same command fetching manifest.json). With it the counts are known and training uses
    the exact partition; without one, training needs `data.samples_per_epoch` (resampled
    shards) and evaluation assigns whole shards to readers.
"""
from __future__ import annotations

import glob
import logging
import os
import re
from dataclasses import dataclass
from typing import Any, Optional

import braceexpand

from shards.errors import ShardError
from shards.manifest import MANIFEST_NAME, parse_manifest, read_manifest, shard_paths
from shards.reading import open_shard

log = logging.getLogger("trainer.data")
# a shard's file name inside a url or a command: the last *.tar(.gz|...) path component
_SHARD_NAME = re.compile(r"[^/\s'\"]+\.(?:tar|tgz|tar\.gz|tar\.bz2|tar\.xz)(?=$|[\s'\"?#])")


class DataError(ShardError):
    """A data-pipeline mistake the user can fix (bad location, too little data); the CLI exits 2."""


@dataclass(frozen=True)
class ShardSource:
    location: str  # what the user wrote
    urls: tuple[str, ...]
    counts: Optional[tuple[int, ...]]  # samples per shard, None when unknown
    manifest: Optional[dict[str, Any]] = None

    @property
    def num_samples(self) -> Optional[int]:
        return None if self.counts is None else sum(self.counts)


def _is_remote(location: str) -> bool:
    return location.startswith("pipe:") or "://" in location


def _manifest_counts(manifest: dict[str, Any]) -> dict[str, int]:
    return {s["name"]: int(s.get("samples", s.get("num_samples", 0))) for s in manifest["shards"]}


def _counts_from_sibling_manifest(paths: list[str]) -> tuple[Optional[tuple[int, ...]], Optional[dict]]:
    """Counts for local files that all live in one shard directory with a finished manifest."""
    directories = {os.path.dirname(os.path.abspath(p)) for p in paths}
    if len(directories) != 1:
        return None, None
    directory = directories.pop()
    if not os.path.isfile(os.path.join(directory, MANIFEST_NAME)):
        return None, None
    manifest = read_manifest(directory)
    by_name = _manifest_counts(manifest)
    names = [os.path.basename(p) for p in paths]
    if not all(name in by_name for name in names):
        return None, None
    return tuple(by_name[name] for name in names), manifest


def _shard_name(url: str) -> Optional[re.Match]:
    matches = list(_SHARD_NAME.finditer(url))
    return matches[-1] if matches else None


def manifest_url(url: str) -> Optional[str]:
    """Where the manifest of a remote shard lives: its file name replaced by manifest.json."""
    name = _shard_name(url)
    return None if name is None else url[:name.start()] + MANIFEST_NAME + url[name.end():]


def _remote_source(location: str, field: str) -> ShardSource:
    """Remote shards, with counts from the manifest next to them when there is one."""
    urls = list(braceexpand.braceexpand(location))
    where = {manifest_url(url) for url in urls}
    if len(where) != 1 or None in where:
        return ShardSource(location, tuple(urls), None)
    url = where.pop()
    try:
        stream = open_shard(url)
        try:
            text = stream.read()
        finally:
            stream.close()
    except Exception as error:  # no manifest there (or unreachable): counts stay unknown
        log.warning("%s: no manifest at %s (%s): sample counts unknown", field, url, error)
        return ShardSource(location, tuple(urls), None)
    manifest = parse_manifest(text, url)
    by_name = _manifest_counts(manifest)
    names = [_shard_name(u).group(0) for u in urls]
    if not all(name in by_name for name in names):
        missing = next(name for name in names if name not in by_name)
        raise DataError(f"'{field}' = {location!r}: {missing} is not in the manifest at {url}")
    return ShardSource(location, tuple(urls), tuple(by_name[name] for name in names), manifest)


def resolve_shards(location: str, field: str = "data.train_shards") -> ShardSource:
    """Expand `location` into shard urls (+ counts where a manifest gives them)."""
    if not location:
        raise DataError(f"'{field}' is empty: point it at a shard directory from `python -m shards`")
    if _is_remote(location):
        return _remote_source(location, field)
    if os.path.isdir(location):
        manifest = read_manifest(location)
        paths = shard_paths(location)
        if not paths:
            raise DataError(f"'{field}': {location}/{MANIFEST_NAME} lists no shards")
        counts = tuple(_manifest_counts(manifest)[os.path.basename(p)] for p in paths)
        return ShardSource(location, tuple(paths), counts, manifest)
    paths = []
    for pattern in braceexpand.braceexpand(location):
        matches = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
        paths.extend(matches)
    missing = [p for p in paths if not os.path.isfile(p)]
    if not paths or missing:
        shown = missing[0] if missing else location
        raise DataError(f"'{field}' = {location!r}: no shard file {shown!r} (expected a shard "
                        f"directory, a brace pattern, a glob, or a pipe:/http(s) url)")
    counts, manifest = _counts_from_sibling_manifest(paths)
    return ShardSource(location, tuple(paths), counts, manifest)


def eval_manifest(shards: str) -> dict[str, Any]:
    """The manifest of an evaluation shard set, local or remote: it holds the ground truth."""
    source = resolve_shards(shards, "data.val_shards")
    if source.manifest is None:
        raise DataError(f"'data.val_shards' = {shards!r}: no manifest.json next to the shards; evaluation "
                        f"needs its ground truth (a set written by `python -m shards coco|mpii`)")
    return source.manifest


def eval_num_samples(shards: str) -> int:
    """Number of samples of an evaluation shard set, from its manifest."""
    source = resolve_shards(shards, "data.val_shards")
    if source.num_samples is None:
        raise DataError(f"'data.val_shards' = {shards!r}: no manifest.json gives its sample count; "
                        f"evaluate from a shard directory written by `python -m shards`")
    return source.num_samples
