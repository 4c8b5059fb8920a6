"""verify catches a flipped byte; bad annotation files are exit 2 with file and field; inspect."""
import json
import os
import shutil
import subprocess
import sys

import cv2

from shards.__main__ import main
from shards.manifest import read_manifest
from shards.verify import verify
from tests.testlib import REPO as REPO_PATH

REPO = str(REPO_PATH)


def test_verify_detects_a_flipped_byte(coco_shards, tmp_path):
    copy = str(tmp_path / "copy")
    shutil.copytree(coco_shards, copy)
    assert verify(copy) == []
    shard = os.path.join(copy, read_manifest(copy)["shards"][1]["name"])
    with open(shard, "r+b") as f:
        f.seek(1500)  # inside the first sample's JPEG payload
        byte = f.read(1)
        f.seek(1500)
        f.write(bytes([byte[0] ^ 0x01]))
    problems = verify(copy)
    assert any("sha256" in p and os.path.basename(shard) in p for p in problems)
    assert main(["verify", copy]) == 1


def test_verify_detects_a_missing_shard(coco_shards, tmp_path):
    copy = str(tmp_path / "copy")
    shutil.copytree(coco_shards, copy)
    os.remove(os.path.join(copy, "000000.tar"))
    assert any("000000.tar: missing" in p for p in verify(copy))


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shards", *args], cwd=REPO, capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=REPO))


def test_malformed_annotation_file_is_exit_2_naming_file_and_field(synth_coco, tmp_path):
    src = os.path.join(synth_coco, "annotations", "person_keypoints_train.json")
    with open(src) as f:
        data = json.load(f)
    data["annotations"][3]["keypoints"] = data["annotations"][3]["keypoints"][:-3]
    bad = str(tmp_path / "bad.json")
    with open(bad, "w") as f:
        json.dump(data, f)
    r = _run_cli("coco", "--annotations", bad, "--images", str(tmp_path), "--out", str(tmp_path / "o"))
    assert r.returncode == 2
    assert bad in r.stderr and "annotations[3].keypoints" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "trunc.json").write_text('{"images": [')
    r = _run_cli("mpii", "--annotations", str(tmp_path / "trunc.json"), "--images", str(tmp_path),
                 "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "trunc.json" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "mpii.json").write_text('[{"image": "a.jpg", "center": [1, 2], "scale": 1.0}]')
    code = main(["mpii", "--annotations", str(tmp_path / "mpii.json"), "--images", str(tmp_path),
                 "--out", str(tmp_path / "o")])
    assert code == 2


def test_inspect_writes_a_png(coco_shards, tmp_path):
    out = str(tmp_path / "sheet.png")
    assert main(["inspect", coco_shards, "--out", out, "--n", "4"]) == 0
    sheet = cv2.imread(out)
    assert sheet is not None and sheet.shape[0] >= 192 and sheet.std() > 10
