"""What a data-set reader hands to the writer; shared JSON-loading and field-checking helpers."""
from __future__ import annotations

import json
import numbers
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import ShardError
from .manifest import sha256_file
from .record import InstanceRecord


@dataclass
class Source:
    records: list[InstanceRecord]
    skipped: Counter  # records dropped while reading annotations, by reason
    ground_truth: Callable[[set[str]], Any]  # given the keys skipped later, the evaluation truth
    sources: dict[str, Any] = field(default_factory=dict)  # input files and their sha256
    # top-level manifest keys that tell evaluation how to score the set (box source, head sizes)
    manifest_fields: dict[str, Any] = field(default_factory=dict)


def load_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ShardError(f"{path}: no such annotation file") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ShardError(f"{path}: not a readable JSON file ({e})") from None


def file_info(path: str) -> dict[str, Any]:
    return {"path": path, "sha256": sha256_file(path)}


def need(obj: Any, key: str, kind: type | tuple, path: str, where: str) -> Any:
    """obj[key], checked to be of `kind`; else a ShardError naming the file and the field."""
    if not isinstance(obj, dict):
        raise ShardError(f"{path}: field '{where}' must be an object")
    if key not in obj:
        raise ShardError(f"{path}: field '{where}.{key}' is missing")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ShardError(f"{path}: field '{where}.{key}' has the wrong type ({type(value).__name__})")
    return value


def numbers_list(value: Any, length: int | None, path: str, where: str) -> list[float]:
    if (not isinstance(value, list) or (length is not None and len(value) != length)
            or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value)):
        size = f"{length} " if length is not None else ""
        raise ShardError(f"{path}: field '{where}' must be a list of {size}numbers")
    return [float(v) for v in value]
