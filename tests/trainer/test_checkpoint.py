"""CheckpointManager: round trip, atomicity under a real SIGKILL and injected failures, pruning
with the best kept, discovery, and refusal of pickles that would run code."""
from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.trainer.backends.backend_worker import build, make_config, train_steps
from tests.testlib import REPO, launch_env
from trainer.errors import CheckpointError
from trainer.backends.base import check_tree_loads_safely
from trainer.checkpoint import MARKER, CheckpointManager, resolve_checkpoint
from trainer.dist import WorldInfo

WORLD = WorldInfo()
CPU = torch.device("cpu")
CLIENT = {"step": 3, "epoch": 1, "batch_in_epoch": 7, "best_metric": float("-inf"),
          "config": {"optim": {"lr": 0.01, "betas": [0.9, 0.99]}}, "tracking_run_id": "abc123"}


def draws() -> list:
    return [random.random(), float(np.random.rand()), torch.rand(3).tolist()]


def trained(config=None, steps: int = 2, seed: int = 0):
    config = config or make_config(dtype="fp16")  # fp16: the GradScaler state is saved too
    backend, optimizer, scheduler = build(config, WORLD, CPU, seed=seed)
    train_steps(backend, config, 0, 0, steps)
    return config, backend, optimizer, scheduler


def save_steps(manager: CheckpointManager, steps, metrics=None) -> list[str]:
    config, backend, _, _ = trained(make_config(), steps=1)
    return [manager.save(backend, step, {"step": step}, metric=None if metrics is None else metrics[i])
            for i, step in enumerate(steps)]


def test_round_trip_restores_weights_optimizer_scheduler_scaler_and_rng(tmp_path):
    manager = CheckpointManager(str(tmp_path), keep_last=2, keep_best=True, world=WORLD)
    config, backend, optimizer, scheduler = trained()
    path = manager.save(backend, 3, CLIENT)
    expected_draws = draws()
    saved = backend.state_dict()

    _, fresh, fresh_optimizer, fresh_scheduler = trained(config, steps=1, seed=7)
    assert manager.load(fresh, path) == CLIENT
    assert draws() == expected_draws
    restored = fresh.state_dict()
    assert all(torch.equal(restored["model"][k], v) for k, v in saved["model"].items())
    assert fresh_scheduler.state_dict() == scheduler.state_dict()
    assert restored["scaler"] == saved["scaler"] and saved["scaler"]["scale"] > 0
    for key, state in optimizer.state_dict()["state"].items():
        loaded = fresh_optimizer.state_dict()["state"][key]
        assert all(torch.equal(loaded[name], value) for name, value in state.items())
    # the weights-only path reads the same tensors (for --init-from)
    weights = manager.load_weights_only(path)
    assert all(torch.equal(weights[k], v) for k, v in saved["model"].items())


def test_marker_lists_files_and_directory_is_renamed(tmp_path):
    manager = CheckpointManager(str(tmp_path), keep_last=2, keep_best=True, world=WORLD)
    (path,) = save_steps(manager, [12])
    assert Path(path).name == "step_00000012" and not Path(path + ".tmp").exists()
    marker = json.loads((Path(path) / MARKER).read_text())
    assert marker["step"] == 12
    assert set(marker["files"]) == {"model.pt", "train_state.pt", "client_state.pt", "rng_rank0.pt"}
    assert all(entry["bytes"] == (Path(path) / name).stat().st_size for name, entry in marker["files"].items())
    assert all(entry["sha256"] == hashlib.sha256((Path(path) / name).read_bytes()).hexdigest()
               for name, entry in marker["files"].items())


def test_sigkill_during_save_leaves_the_previous_checkpoint(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "tests.trainer.backends.backend_worker", "crash",
                             str(tmp_path)], env=launch_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "WROTE_FIRST_FILE", (line, proc.stderr.read() if proc.poll() is not None else "")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    root = tmp_path / "ckpt"
    partial = root / "step_00000002.tmp"
    assert partial.is_dir() and (partial / "model.pt").exists()  # killed mid-save
    reader = CheckpointManager(str(root), 3, True, WORLD, clean_on_start=False)
    assert reader.latest() == str(root / "step_00000001")
    # start-up of the restarted run cleans the partial directory; the previous checkpoint loads
    restarted = CheckpointManager(str(root), 3, True, WORLD)
    assert not partial.exists() and restarted.latest() == str(root / "step_00000001")
    config, backend, _, _ = trained(make_config(), steps=1)
    assert restarted.load(backend, restarted.latest()) == {"step": 1}


def test_failure_before_rename_keeps_new_checkpoint_invisible(tmp_path, monkeypatch):
    manager = CheckpointManager(str(tmp_path), keep_last=3, keep_best=True, world=WORLD)
    (first,) = save_steps(manager, [1])

    def fail(*args):
        raise OSError("disk vanished")

    monkeypatch.setattr("trainer.checkpoint.os.replace", fail)
    with pytest.raises(CheckpointError, match="disk vanished"):  # every rank agrees, none waits in a barrier
        save_steps(manager, [2])
    monkeypatch.undo()
    assert not (tmp_path / "step_00000002.tmp").exists()  # never published, and removed
    assert manager.latest() == first
    # an unmarked final-looking directory (e.g. copied by hand, half-deleted) is ignored as well
    (tmp_path / "step_00000009").mkdir()
    assert manager.latest() == first
    CheckpointManager(str(tmp_path), 3, True, WORLD)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000001"]


def test_keep_last_prunes_but_never_the_best(tmp_path):
    manager = CheckpointManager(str(tmp_path), keep_last=2, keep_best=True, world=WORLD)
    save_steps(manager, [1, 2, 3, 4, 5], metrics=[0.1, 0.9, 0.2, 0.3, 0.4])
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == \
        ["step_00000002", "step_00000004", "step_00000005"]
    assert manager.best() == {"path": str(tmp_path / "step_00000002"), "step": 2, "metric": 0.9}
    assert manager.latest() == str(tmp_path / "step_00000005")
    # the best is named relative to the directory: it survives moving the checkpoints
    moved = tmp_path.parent / (tmp_path.name + "_moved")
    os.replace(tmp_path, moved)
    assert CheckpointManager(str(moved), 2, True, WORLD).best()["path"] == str(moved / "step_00000002")


def test_lower_is_better_and_no_best_tracking(tmp_path):
    lower = CheckpointManager(str(tmp_path / "a"), keep_last=1, keep_best=True, world=WORLD, higher_is_better=False)
    save_steps(lower, [1, 2, 3], metrics=[0.5, 0.2, 0.7])
    assert lower.best()["step"] == 2
    plain = CheckpointManager(str(tmp_path / "b"), keep_last=1, keep_best=False, world=WORLD)
    save_steps(plain, [1, 2], metrics=[0.9, 0.1])
    assert plain.best() is None and [p.name for p in (tmp_path / "b").iterdir()] == ["step_00000002"]


def test_resolve_accepts_a_checkpoints_directory_and_errors_clearly(tmp_path):
    manager = CheckpointManager(str(tmp_path / "ckpt"), keep_last=3, keep_best=True, world=WORLD)
    paths = save_steps(manager, [1, 2])
    assert resolve_checkpoint(str(tmp_path / "ckpt")) == paths[-1]
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoint(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        resolve_checkpoint(str(tmp_path / "empty"))


class RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def backend_of_tiny_run():
    return trained(make_config(), steps=1)[1]


@pytest.mark.parametrize("victim", ["model.pt", "train_state.pt", "client_state.pt", "rng_rank0.pt"])
def test_malicious_pickle_is_refused_without_running(tmp_path, victim):
    manager = CheckpointManager(str(tmp_path / "ckpt"), keep_last=3, keep_best=True, world=WORLD)
    (path,) = save_steps(manager, [1])
    marker = tmp_path / "pwned"
    torch.save({"payload": RunsCode(marker)}, Path(path) / victim)
    with pytest.raises(CheckpointError, match=f"{victim}: damaged"):  # the marker's checksums catch it first
        manager.load(backend_of_tiny_run(), path)
    # An attacker who also rewrites the marker's checksums still meets weights_only=True.
    complete = json.loads((Path(path) / MARKER).read_text())
    data = (Path(path) / victim).read_bytes()
    complete["files"][victim] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (Path(path) / MARKER).write_text(json.dumps(complete))
    config, backend, _, _ = trained(make_config(), steps=1)
    with pytest.raises(CheckpointError, match=f"{victim}: refused to load"):
        manager.load(backend, path)
    if victim == "model.pt":
        with pytest.raises(CheckpointError, match="refused to load"):
            manager.load_weights_only(path)
    with pytest.raises(CheckpointError, match="refused to load"):  # the pre-check used before DeepSpeed
        check_tree_loads_safely(path)
    assert not marker.exists()


def test_wrong_backend_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "step_00000001").mkdir()
    (tmp_path / "step_00000001" / MARKER).write_text(json.dumps({"step": 1, "files": {}}))
    manager = CheckpointManager(str(tmp_path), 3, True, WORLD)
    config, backend, _, _ = trained(make_config(), steps=1)
    with pytest.raises(CheckpointError, match="not a DDP checkpoint"):
        manager.load(backend, str(tmp_path / "step_00000001"))
    with pytest.raises(CheckpointError, match="neither model.pt"):
        manager.load_weights_only(str(tmp_path / "step_00000001"))
