"""Every user mistake of issue 18, reproduced and answered as intended: one line naming the file,
key or model, a status that says what happened, and nothing lost, overwritten or left behind.

| mistake                                                          | test                                              |
|------------------------------------------------------------------|---------------------------------------------------|
| existing run dir + changed config (lr, model shape)              | test_changed_config_is_refused_then_resume_applies_and_logs_it, test_changed_model_shape_is_refused_even_with_resume |
| two trainings into one directory                                 | test_second_job_into_a_locked_run_dir_exits_2_naming_the_holder (real torchrun: test_run_lock.py) |
| eval --out over a checkpoint's model.pt / any existing file      | test_eval_out_never_overwrites, test_damaged_checkpoint_is_refused_naming_the_file, test_show_batch_and_inspect_never_overwrite |
| shards --out into an existing directory                          | test_shards_out_continues_only_its_own_run        |
| shards inspect --out into a read-only directory                  | test_read_only_outputs_are_one_line_errors        |
| COCO config + MPII val shards; MPII train shards + COCO config   | test_schema_mismatch_fails_preflight              |
| corrupt val manifest.json; empty val set; missing shard path     | test_broken_val_sets_fail_preflight, test_missing_shard_path_fails_check |
| a mistyped local tracking URI (MLflow would create directories)  | test_mistyped_tracking_uri_fails_check_and_creates_nothing |
| read-only output directories (train, shards, predict, eval)      | test_read_only_outputs_are_one_line_errors        |
| eval --out into a missing directory (after the evaluation ran)   | test_eval_out_into_a_missing_directory_fails_before_evaluating |
| output_dir that is a file; --config a PNG                        | test_output_dir_that_is_a_file_and_a_png_config   |
| --init-from another architecture                                 | test_init_from_another_architecture               |
| --device cuda without CUDA                                       | test_device_cuda_without_cuda                     |
| models:/ unknown model / alias / version, no tracking URI        | test_registry_mistakes_are_one_line_and_leave_no_mlflow_db |
| boxes of 1e30, boxes outside the image, boxes matching no image  | test_absurd_and_outside_boxes, test_boxes_matching_no_image |
| Ctrl-C in shards                                                 | test_ctrl_c_in_shards_is_one_line_exit_130        |
| Ctrl-C / SIGTERM in training: exit 0 like a finished run         | test_training_stopped_by_a_signal_exits_128_plus_signal |
| shards coco with a wrong --images directory reports "0"          | test_wrong_images_directory_is_an_error           |
| overlays of two inputs named alike; left/right limbs alike       | test_overlays_never_overwrite_each_other, test_left_and_right_limbs_differ |
| an AP 0.0 model registered as champion                           | test_changed_config_is_refused_then_resume_applies_and_logs_it (floor) |
| launch scripts' auto-resume warning never fires                  | test_launch_auto_resume_warning_fires             |
| sourcing scripts/setup_env.sh exits the caller's shell           | test_setup_env_is_safe_to_source                  |
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.e2e.user_mistakes_testlib import (checkpoint, mpii_shards, one_line_error, read_only_dir,  # noqa: F401
                                              shards, trainer)
from tests.testlib import LAUNCH, REPO, demo_shards, launch_env, train_args, write_images  # noqa: F401
from trainer.run_dir import RUN_FILE, RunLock

pytestmark = pytest.mark.slow  # in-process runs of a few seconds, and a few subprocesses

FAST = ("schedule.steps_per_epoch=2", "data.batch_size=4")  # two steps: a run of a few seconds


# ---------------------------------------------------------------------------------------------
# Run ownership


def test_changed_config_is_refused_then_resume_applies_and_logs_it(demo_shards, tmp_path):
    import mlflow
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = tmp_path / "run"
    tracked = ("tracking.enabled=true", f"tracking.uri={uri}", "tracking.registered_model=tiny",
               "eval.every_epochs=1")
    first = trainer("train", *train_args(demo_shards, run, *FAST, *tracked))
    assert first.code == 0, first
    # Two steps of a tiny model score AP 0: below the floor, so no champion is registered.
    assert "not registered: AP 0.0000 is not above tracking.register_min_metric" in first.out + first.err
    client = mlflow.MlflowClient(uri)
    assert client.search_registered_models() == [] or not client.search_model_versions("name='tiny'")
    recorded = json.loads((run / RUN_FILE).read_text())

    changed = trainer("train", *train_args(demo_shards, run, *FAST, *tracked, "optim.lr=1e-4"))
    one_line_error(changed, str(run), "optim.lr 0.002 -> 0.0001", "--resume")
    assert json.loads((run / RUN_FILE).read_text()) == recorded  # nothing was touched

    same = trainer("train", *train_args(demo_shards, run, *FAST, *tracked, "tracking.run_name=x"))
    assert same.code == 0 and "resumed from" in same.out + same.err, same  # a neutral key: resumes

    resumed = trainer("train", "--resume", *train_args(demo_shards, run, *FAST, *tracked, "optim.lr=1e-4",
                                                       "schedule.epochs=2"))
    assert resumed.code == 0, resumed
    history = json.loads((run / RUN_FILE).read_text())["history"]
    assert history[-1]["changes"] == {"optim.lr": [0.002, 0.0001], "schedule.epochs": [1, 2]}
    assert "lr: 0.0001" in (run / "config.yaml").read_text()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1  # every start continued the same MLflow run
    params = runs[0].data.params
    assert params["optim.lr"] == "0.002" and params["resumed_at_2/optim.lr"] == "0.0001", params
    assert not Path("mlflow.db").exists()


def test_changed_model_shape_is_refused_even_with_resume(demo_shards, tmp_path):
    assert trainer("train", *train_args(demo_shards, tmp_path, *FAST)).code == 0
    for extra in ((), ("--resume",)):
        one_line_error(trainer("train", *extra, *train_args(demo_shards, tmp_path, *FAST, "model.stacks=2")),
                       "model.stacks 1 -> 2", "new output_dir")


def test_second_job_into_a_locked_run_dir_exits_2_naming_the_holder(demo_shards, tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from trainer.run_dir import RunLock; "
                               "RunLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(60)",
                               str(tmp_path)], env=launch_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for command in ("check", "train"):
            one_line_error(trainer(command, *train_args(demo_shards, tmp_path, *FAST)),
                           "in use by another training job", f"pid {holder.pid}")
        assert not (tmp_path / "checkpoints").exists()
    finally:
        holder.kill()
        holder.wait()
    lock = RunLock(str(tmp_path))  # the OS released it with the holder
    lock.acquire()
    lock.release()


# ---------------------------------------------------------------------------------------------
# Outputs: never overwritten silently, never inside a checkpoint


def test_eval_out_never_overwrites(checkpoint, demo_shards, tmp_path):
    model = Path(checkpoint) / "model.pt"
    before = model.read_bytes()
    one_line_error(trainer("eval", "--checkpoint", checkpoint, "--shards", demo_shards / "val", "--out", model),
                   "inside the checkpoint")
    one_line_error(trainer("eval", "--checkpoint", checkpoint, "--shards", demo_shards / "val", "--out", model,
                           "--overwrite"), "inside the checkpoint")
    assert model.read_bytes() == before
    existing = tmp_path / "preds.json"
    existing.write_text("keep me")
    one_line_error(trainer("eval", "--checkpoint", checkpoint, "--shards", demo_shards / "val", "--out", existing),
                   str(existing), "--overwrite")
    assert existing.read_text() == "keep me"


def test_show_batch_and_inspect_never_overwrite(demo_shards, tmp_path):
    existing = tmp_path / "sheet.png"
    existing.write_bytes(b"keep me")
    one_line_error(shards("inspect", demo_shards / "val", "--out", existing), "--overwrite")
    one_line_error(trainer("show-batch", *train_args(demo_shards, tmp_path / "run"), "--out", existing), "--overwrite")
    assert existing.read_bytes() == b"keep me"


def test_damaged_checkpoint_is_refused_naming_the_file(checkpoint, demo_shards, tmp_path):
    damaged = Path(shutil.copytree(Path(checkpoint), tmp_path / Path(checkpoint).name))
    data = bytearray((damaged / "model.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one bit pattern changed
    (damaged / "model.pt").write_bytes(bytes(data))
    one_line_error(trainer("eval", "--checkpoint", damaged, "--shards", demo_shards / "val"),
                   str(damaged / "model.pt"), "damaged")


def test_eval_out_into_a_missing_directory_fails_before_evaluating(checkpoint, demo_shards, tmp_path):
    started = time.monotonic()
    one_line_error(trainer("eval", "--checkpoint", checkpoint, "--shards", demo_shards / "val",
                           "--out", tmp_path / "missing" / "preds.json"), "does not exist")
    assert time.monotonic() - started < 5  # refused up front, not after the evaluation
    assert not (tmp_path / "missing").exists()


def test_shards_out_continues_only_its_own_run(demo_shards, tmp_path):
    raw = demo_shards.parent / "coco"
    args = ["coco", "--annotations", raw / "annotations" / "person_keypoints_val.json",
            "--images", raw / "images" / "val", "--split", "val", "--workers", "1", "--no-progress"]
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("precious")
    one_line_error(shards(*args, "--out", foreign), "not a shard set", "notes.txt")
    one_line_error(shards(*args, "--out", foreign, "--overwrite"), "notes.txt")
    assert (foreign / "notes.txt").read_text() == "precious" and sorted(os.listdir(foreign)) == ["notes.txt"]

    out = tmp_path / "val"
    assert shards(*args, "--out", out).code == 0
    assert shards(*args, "--out", out).code == 0  # its own run again: continues (here: nothing to do)
    one_line_error(shards(*args, "--out", out, "--max-side", "128"), "other sources or settings", "--overwrite")
    assert shards(*args, "--out", out, "--max-side", "128", "--overwrite").code == 0


def test_wrong_images_directory_is_an_error(demo_shards, tmp_path):
    raw = demo_shards.parent / "coco"
    one_line_error(shards("coco", "--annotations", raw / "annotations" / "person_keypoints_val.json",
                          "--images", raw / "images" / "train", "--out", tmp_path / "x", "--workers", "1"),
                   "--images", "none of the first")
    assert not (tmp_path / "x").exists()


def test_read_only_outputs_are_one_line_errors(checkpoint, demo_shards, tmp_path):
    images = write_images(tmp_path / "in", [(64, 48)])
    with read_only_dir(tmp_path / "ro") as ro:
        one_line_error(trainer("train", *train_args(demo_shards, ro / "run", *FAST)), "not writable")
        one_line_error(trainer("check", *train_args(demo_shards, ro / "run", *FAST)), "not writable")
        one_line_error(shards("inspect", demo_shards / "val", "--out", ro / "sheet.png"), "sheet.png")
        raw = demo_shards.parent / "coco"
        one_line_error(shards("coco", "--annotations", raw / "annotations" / "person_keypoints_val.json",
                              "--images", raw / "images" / "val", "--out", ro / "shards", "--workers", "1"),
                       str(ro))
        one_line_error(trainer("predict", "--model", checkpoint, "--images", *images, "--out", ro / "pred"),
                       "not writable")
        one_line_error(trainer("eval", "--checkpoint", checkpoint, "--shards", demo_shards / "val",
                               "--out", ro / "p.json"), "not writable")


# ---------------------------------------------------------------------------------------------
# Data mistakes, found by the preflight in seconds


def test_schema_mismatch_fails_preflight(demo_shards, mpii_shards, tmp_path):
    mixed = train_args(demo_shards, tmp_path / "run", *FAST, "eval.every_epochs=1",
                       f"data.val_shards={mpii_shards / 'val'}")
    for command in ("check", "train"):
        one_line_error(trainer(command, *mixed), "data.val_shards", "mpii16", "coco17")
    one_line_error(trainer("train", *train_args(demo_shards, tmp_path / "run", *FAST,
                                                f"data.train_shards={mpii_shards / 'train'}")),
                   "data.train_shards", "mpii16")
    # MPII config and shards, but COCO's metric: no checkpoint could ever be the best.
    one_line_error(trainer("check", *train_args(mpii_shards, tmp_path / "run", "data.schema=mpii16",
                                                "eval.every_epochs=1", "eval.metric=AP")), "eval.metric")
    assert not (tmp_path / "run").exists()


def test_broken_val_sets_fail_preflight(demo_shards, tmp_path):
    corrupt = Path(shutil.copytree(demo_shards / "val", tmp_path / "corrupt"))
    (corrupt / "manifest.json").write_text("{ not json")
    empty = Path(shutil.copytree(demo_shards / "val", tmp_path / "empty"))
    manifest = json.loads((empty / "manifest.json").read_text())
    for shard in manifest["shards"]:
        shard["samples"] = 0
    (empty / "manifest.json").write_text(json.dumps(manifest))
    for val, words in ((corrupt, ("unreadable manifest",)), (empty, ("holds no samples",))):
        one_line_error(trainer("check", *train_args(demo_shards, tmp_path / "run", "eval.every_epochs=1",
                                                    f"data.val_shards={val}")), str(val), *words)


def test_mistyped_tracking_uri_fails_check_and_creates_nothing(demo_shards, tmp_path):
    typo = tmp_path / "mlfow" / "mlflow.db"
    one_line_error(trainer("check", *train_args(demo_shards, tmp_path / "run", "tracking.enabled=true",
                                                f"tracking.uri=sqlite:///{typo}")), "tracking.uri", "does not exist")
    assert not typo.parent.exists() and not (tmp_path / "run").exists()


def test_missing_shard_path_fails_check(demo_shards, tmp_path):
    args = train_args(demo_shards, tmp_path / "run", f"data.train_shards={tmp_path / 'nope'}")
    assert trainer("train", "--print-config", *args).code == 0  # what the launch scripts used to run
    one_line_error(trainer("check", *args), "data.train_shards", "nope")


def test_output_dir_that_is_a_file_and_a_png_config(demo_shards, tmp_path):
    (tmp_path / "file").write_text("")
    one_line_error(trainer("train", *train_args(demo_shards, tmp_path / "file", *FAST)), "is a file")
    png = tmp_path / "config.png"
    cv2.imwrite(str(png), np.zeros((8, 8, 3), np.uint8))
    one_line_error(trainer("train", "--config", png), str(png))


def test_init_from_another_architecture(checkpoint, demo_shards, tmp_path):
    one_line_error(trainer("train", "--init-from", checkpoint, *train_args(demo_shards, tmp_path, *FAST)),
                   "--init-from", "do not fit")


# ---------------------------------------------------------------------------------------------
# predict and the registry


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda(checkpoint, tmp_path):
    images = write_images(tmp_path / "in", [(64, 48)])
    one_line_error(trainer("predict", "--model", checkpoint, "--images", *images, "--out", tmp_path / "o",
                           "--device", "cuda"), "--device cuda")


def test_registry_mistakes_are_one_line_and_leave_no_mlflow_db(checkpoint, tmp_path, monkeypatch):
    import mlflow
    images = write_images(tmp_path / "in", [(64, 48)])
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    predict = ("predict", "--images", *images, "--out", tmp_path / "o")
    one_line_error(trainer(*predict, "--model", "models:/pose@champion"), "models:/pose@champion", "--tracking-uri")
    typo = tmp_path / "typo" / "mlflow.db"
    one_line_error(trainer(*predict, "--model", "models:/pose@champion", "--tracking-uri", f"sqlite:///{typo}"),
                   str(typo), "does not exist")
    store = f"sqlite:///{tmp_path / 'registry.db'}"
    mlflow.MlflowClient(store).search_experiments()  # an existing, empty registry
    for model in ("models:/pose@champion", "models:/pose/3"):
        one_line_error(trainer(*predict, "--model", model, "--tracking-uri", store), model)
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "typo").exists()
    assert not (tmp_path / "o").exists() and not (tmp_path / "mlruns").exists()


def test_absurd_and_outside_boxes(checkpoint, tmp_path):
    images = write_images(tmp_path / "in", [(64, 48)])
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"100.jpg": [[0, 0, 1e30, 1e30], [500, 500, 10, 10], [-50, 0, 20, 20]]}))
    result = trainer("predict", "--model", checkpoint, "--images", *images, "--boxes", boxes, "--out", tmp_path / "o")
    assert result.code == 0, result
    assert "1 people" in result.out and "2 boxes outside their image skipped" in result.out
    people = json.loads((tmp_path / "o" / "keypoints.json").read_text())
    assert len(people) == 1 and np.isfinite(people[0]["keypoints"]).all()


def test_boxes_matching_no_image(checkpoint, tmp_path):
    images = write_images(tmp_path / "in", [(64, 48)])
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps([{"image_id": 999, "bbox": [0, 0, 10, 10], "score": 1.0, "category_id": 1}]))
    one_line_error(trainer("predict", "--model", checkpoint, "--images", *images, "--boxes", boxes,
                           "--out", tmp_path / "o"), "no box matches any of the 1 images")
    assert not (tmp_path / "o").exists()


def test_overlays_never_overwrite_each_other(checkpoint, tmp_path):
    first = write_images(tmp_path / "a", [(64, 48)], seed=0)[0]
    second = write_images(tmp_path / "b", [(64, 48)], seed=1)[0]
    assert Path(first).name == Path(second).name
    out = tmp_path / "o"
    assert trainer("predict", "--model", checkpoint, "--images", first, second, "--out", out).code == 0
    assert sorted(p.name for p in out.glob("*_pose.jpg")) == ["100_2_pose.jpg", "100_pose.jpg"]
    again = trainer("predict", "--model", checkpoint, "--images", first, "--out", out)
    one_line_error(again, "keypoints.json", "--overwrite")


def test_left_and_right_limbs_differ():
    from shards.schema import load_schema
    from trainer.visualize import draw_pose
    schema = load_schema("coco17")
    image = np.zeros((100, 100, 3), np.uint8)
    keypoints = np.zeros((17, 3))
    keypoints[:, 2] = 1
    keypoints[5] = [20, 50, 1]  # left shoulder
    keypoints[6] = [80, 50, 1]  # right shoulder
    keypoints[[i for i in range(17) if i not in (5, 6)], 2] = 0
    draw_pose(image, keypoints, schema.skeleton, names=schema.keypoint_names)
    left, right = image[50, 20], image[50, 80]
    assert left.any() and right.any() and not np.array_equal(left, right)


# ---------------------------------------------------------------------------------------------
# Signals and exit codes


def _popen(args: list[str], cwd: Path) -> subprocess.Popen:
    """The process in its own group, stdout and stderr merged."""
    return subprocess.Popen([sys.executable, *args], cwd=cwd, env=launch_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _signal_when(process: subprocess.Popen, needle: str, signum: int, timeout: float = 120) -> str:
    """Send `signum` to the process group (as a terminal's Ctrl-C does) once `needle` is printed."""
    seen, deadline = [], time.monotonic() + timeout
    for line in process.stdout:
        seen.append(line)
        if needle in line:
            os.killpg(process.pid, signum)
            break
        assert time.monotonic() < deadline, "".join(seen)
    rest, _ = process.communicate(timeout=timeout)
    return "".join(seen) + rest


def test_ctrl_c_in_shards_is_one_line_exit_130(demo_shards, tmp_path):
    """Ctrl-C reaches the whole process group (parent and pool workers), as from a terminal."""
    raw = demo_shards.parent / "coco"
    process = subprocess.Popen(
        [sys.executable, "-m", "shards", "coco", "--annotations", str(raw / "annotations" / "person_keypoints_train.json"),
         "--images", str(raw / "images" / "train"), "--out", str(tmp_path / "s"), "--workers", "2",
         "--samples-per-shard", "8", "--no-progress"], cwd=tmp_path, env=launch_env(POSEFORGE_SHARDS_THROTTLE_S="1"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    while not list((tmp_path / "s").glob("*.tar")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)
    output, errors = process.communicate(timeout=60)
    assert process.returncode == 130, (output, errors)
    assert errors.strip().splitlines() == ["interrupted (Ctrl-C)"], errors
    assert not (tmp_path / "s" / "manifest.json").exists()


def test_training_stopped_by_a_signal_exits_128_plus_signal(demo_shards, tmp_path):
    args = ["-m", "trainer", "train", *train_args(demo_shards, tmp_path / "run", "data.batch_size=4",
                                                  "schedule.epochs=3")]
    stopped = _popen(args, REPO)
    output = _signal_when(stopped, "step 2/", signal.SIGTERM)
    assert stopped.returncode == 143, output
    assert "stopped by SIGTERM" in output and "checkpoint " in output and "step_000000" in output, output
    again = _popen(args, REPO)
    output = _signal_when(again, "step 5/", signal.SIGINT)
    assert again.returncode == 130, output
    assert "resumed from" in output and "stopped by SIGINT" in output and "Traceback" not in output, output


# ---------------------------------------------------------------------------------------------
# Launch scripts


def test_launch_auto_resume_warning_fires(demo_shards, tmp_path):
    shim = tmp_path / "python"  # records the torchrun command line instead of running it
    shim.write_text(f"#!/bin/sh\nif [ \"$1 $2\" = \"-m torch.distributed.run\" ]; then exit 0; fi\n"
                    f"exec {sys.executable} \"$@\"\n")
    shim.chmod(0o755)
    args = train_args(demo_shards, tmp_path / "run", "checkpoint.auto_resume=false")
    result = subprocess.run(["bash", str(LAUNCH / "torchrun_single_node.sh"), *args],
                            env={**launch_env(MAX_RESTARTS="1"), "PYTHON": str(shim)}, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result
    assert "checkpoint.auto_resume is false: a restarted run starts from step 0" in result.stderr


def test_setup_env_is_safe_to_source(tmp_path):
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "setup_env.sh", tmp_path / "scripts")
    (tmp_path / "setup.cfg").write_text("")
    # PYTHON=false: creating the venv fails, as any step might; the caller's shell must survive it.
    script = f"PYTHON=false; . {tmp_path}/scripts/setup_env.sh; echo \"status $? options $-\"; echo alive"
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip().splitlines()[-1] == "alive", result
    status_line = result.stdout.strip().splitlines()[-2]
    options = status_line.split()[-1]
    assert status_line.startswith("status 1 ") and "e" not in options and "u" not in options, result
    assert not (tmp_path / ".venv").exists()
