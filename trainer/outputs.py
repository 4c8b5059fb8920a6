"""Where a command may write: never over an existing output unless --overwrite, never inside a
checkpoint directory (only the checkpoint writer writes there), and only where the directory
exists and is writable, all checked before the work starts and without creating anything."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from trainer.errors import OutputError

CHECKPOINT_MARKER = "COMPLETE"  # written last into every checkpoint directory (checkpoint.py)


def enclosing_checkpoint(path: str | Path) -> Optional[Path]:
    """The checkpoint directory that `path` is, or lies in, if any."""
    for candidate in (Path(path).absolute(), *Path(path).absolute().parents):
        if (candidate / CHECKPOINT_MARKER).is_file():
            return candidate
    return None


def _refuse_checkpoint(path: str | Path, option: str) -> None:
    checkpoint = enclosing_checkpoint(path)
    if checkpoint is not None:
        raise OutputError(f"{option} {path}: inside the checkpoint {checkpoint}, where only the checkpoint "
                          f"writer writes; choose another path")


def _writable_ancestor(path: Path, option: str) -> None:
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{option} {path}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {path}: {existing} is not writable")


def check_output_file(path: str, overwrite: bool, option: str = "--out") -> None:
    """A file the command will write: its directory must exist; an existing file needs --overwrite."""
    target = Path(path)
    _refuse_checkpoint(target, option)
    if target.is_dir():
        raise OutputError(f"{option} {path}: is a directory, not a file name")
    if target.exists() and not overwrite:
        raise OutputError(f"{option} {path}: exists; --overwrite replaces it")
    parent = target.absolute().parent
    if not parent.is_dir():
        raise OutputError(f"{option} {path}: the directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {path}: the directory {parent} is not writable")


def check_output_dir(path: str, overwrite: bool, outputs: tuple[str, ...], option: str = "--out") -> None:
    """A directory the command will create or fill with `outputs`; existing ones need --overwrite."""
    target = Path(path)
    _refuse_checkpoint(target, option)
    if target.exists() and not target.is_dir():
        raise OutputError(f"{option} {path}: is a file, not a directory")
    present = [name for name in outputs if (target / name).exists()]
    if present and not overwrite:
        raise OutputError(f"{option} {path}: already holds {', '.join(present)}; --overwrite replaces it")
    _writable_ancestor(target, option)


def local_store_path(uri: str) -> Optional[str]:
    """The local path behind an MLflow URI (sqlite:///PATH, file://PATH or a plain path), else None.
    MLflow creates what is missing there, so commands check it exists first."""
    for scheme in ("sqlite:///", "file://"):
        if uri.startswith(scheme):
            return uri[len(scheme):]
    return uri if "://" not in uri else None
