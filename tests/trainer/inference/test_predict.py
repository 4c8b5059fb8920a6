"""Predictor and `python -m trainer predict` on real image files and a real checkpoint."""
from __future__ import annotations

import json
import subprocess
import sys
import zlib
import struct
from pathlib import Path

import numpy as np
import pytest

from tests.testlib import REPO, make_checkpoint, write_images
from trainer.data import transforms
from trainer.inference.images import ImageInputError, decode_image_bytes, read_image
from trainer.inference.predictor import load_checkpoint_predictor
from trainer.inference.cli import load_boxes

CLI = [sys.executable, "-m", "trainer"]  # the one error boundary of the command line


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"))[0]


def huge_png(path: Path, side: int = 20000) -> None:
    """A valid greyscale PNG of side x side (1.2 GB once decoded as BGR), written in ~1 MB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    compressor = zlib.compressobj(1)
    row = bytes(side + 1)
    body = b"".join(compressor.compress(row * 500) for _ in range(side // 500)) + compressor.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def test_keypoints_map_back_through_the_eval_affine(checkpoint, tmp_path):
    predictor = load_checkpoint_predictor(checkpoint)
    image = read_image(write_images(tmp_path, [(160, 120)])[0])
    box = np.array([20.0, 10.0, 50.0, 90.0])
    person = predictor.predict([image], [box[None]])[0][0]
    # recompute independently: crop, forward (no flip), argmax + quarter step, inverse affine
    crop, to_image = predictor._crop(image, box)
    flipless = load_checkpoint_predictor(checkpoint, flip_test=False)
    mine = flipless._run(crop[None], to_image[None])[0]
    assert mine.shape == person["keypoints"].shape == (17, 3)
    geometry = transforms.sample_geometry(None, box, None, predictor.config.augment, predictor.input_size, None)
    centre_in = transforms.apply_affine(transforms.crop_to_input_affine(geometry, predictor.input_size)[0],
                                        np.array([[45.0, 55.0]]))
    assert np.allclose(centre_in, [[31.5, 23.5]])  # box centre -> input centre ((w-1)/2, (h-1)/2)
    assert np.isfinite(person["keypoints"]).all() and person["score"] == pytest.approx(person["keypoints"][:, 2].mean())


def test_any_batch_and_image_size_and_whole_image_default(checkpoint, tmp_path):
    predictor = load_checkpoint_predictor(checkpoint)
    images = [read_image(p) for p in write_images(tmp_path, [(64, 48), (300, 97), (33, 410)])]
    together = predictor.predict(images)
    alone = [predictor.predict([image])[0] for image in images]
    assert [len(people) for people in together] == [1, 1, 1]
    for a, b, image in zip(together, alone, images):
        assert a[0]["box"] == [0.0, 0.0, image.shape[1], image.shape[0]]
        np.testing.assert_allclose(a[0]["keypoints"], b[0]["keypoints"], rtol=0, atol=1e-4)
    boxed = predictor.predict(images[:2], [np.zeros((0, 4)), [[1, 1, 20, 30], [40, 5, 60, 60]]])
    assert [len(people) for people in boxed] == [0, 2]


def test_bad_inputs_name_the_file(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    for path, words in ((empty, "empty"), (text, "not a readable image"), (tmp_path / "missing.jpg", "cannot read")):
        with pytest.raises(ImageInputError, match=words) as error:
            read_image(str(path))
        assert str(path) in str(error.value)
    with pytest.raises(ImageInputError, match="above the limit"):
        decode_image_bytes(Path(write_images(tmp_path, [(100, 100)])[0]).read_bytes(), "x.jpg", max_pixels=9999)


def test_boxes_json_formats(tmp_path):
    images = [str(tmp_path / "000000000042.jpg"), str(tmp_path / "b.jpg")]
    by_name = tmp_path / "named.json"
    by_name.write_text(json.dumps({"b.jpg": [[1, 2, 3, 4]]}))
    assert [b.shape for b, _ in load_boxes(str(by_name), images)] == [(0, 4), (1, 4)]
    assert load_boxes(str(by_name), images)[1][1].tolist() == [1.0]  # no score given: 1
    by_name.write_text(json.dumps({"b.jpg": [[1, 2, 3, 4, 0.25]]}))
    assert load_boxes(str(by_name), images)[1][1].tolist() == [0.25]
    coco = tmp_path / "dets.json"
    coco.write_text(json.dumps([{"image_id": 42, "bbox": [1, 2, 3, 4], "score": 0.9, "category_id": 1},
                                {"image_id": 42, "bbox": [1, 2, 3, 4], "score": 0.9, "category_id": 3}]))
    assert [b.shape for b, _ in load_boxes(str(coco), images)] == [(1, 4), (0, 4)]
    assert load_boxes(str(coco), images)[0][1].tolist() == [0.9]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"b.jpg": [[1, 2, 0, 4]]}))
    with pytest.raises(ImageInputError, match="positive width"):
        load_boxes(str(bad), images)


@pytest.mark.slow
def test_cli_writes_json_and_overlays_and_refuses_bad_input(checkpoint, tmp_path):
    images = write_images(tmp_path / "in", [(120, 90), (64, 200)])
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"100.jpg": [[5, 5, 50, 60], [60, 10, 50, 70]]}))
    out = tmp_path / "out"
    done = subprocess.run(CLI + ["predict", "--model", checkpoint, "--images", *images, "--boxes", str(boxes),
                                 "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    results = json.loads((out / "keypoints.json").read_text())
    assert [r["image_id"] for r in results] == [100, 100]  # 101.png has no boxes in the file
    assert all(len(r["keypoints"]) == 51 and r["category_id"] == 1 for r in results)
    assert sorted(p.name for p in out.glob("*_pose.jpg")) == ["100_pose.jpg", "101_pose.jpg"]

    zero = tmp_path / "zero.jpg"
    zero.write_bytes(b"")
    huge = tmp_path / "huge.png"
    huge_png(huge)
    # 2 GB of address space: enough for the CLI, too little to decode the 1.2 GB image
    for bad, words in ((zero, "empty"), (huge, "above the limit")):
        done = subprocess.run(["prlimit", "--as=2000000000", *CLI, "predict", "--model", checkpoint,
                               "--images", images[0], str(bad), "--out", str(out)],
                              cwd=REPO, capture_output=True, text=True, timeout=300)
        assert done.returncode == 2, done.stderr
        assert str(bad) in done.stderr and words in done.stderr and "Traceback" not in done.stderr


def test_predict_drops_low_scores_and_near_duplicate_boxes(checkpoint, tmp_path):
    """--box-score-thr drops the low box; of two identical boxes (OKS 1 > 0.9) one is drawn; the
    instance score is box score x mean keypoint score above 0.2 (the evaluation protocol)."""
    from trainer.__main__ import main as trainer_main

    images = write_images(tmp_path / "in", [(160, 120)])
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps([{"image_id": 100, "category_id": 1, "bbox": box, "score": score}
                                for box, score in (([10, 10, 60, 90], 0.9), ([10, 10, 60, 90], 0.8),
                                                   ([100, 20, 40, 80], 0.05))]))
    counts = {}
    for threshold in ("0.3", "0.0"):
        out = tmp_path / f"out{threshold}"
        assert trainer_main(["predict", "--model", checkpoint, "--images", *images, "--boxes", str(dets),
                             "--out", str(out), "--no-overlays", "--box-score-thr", threshold]) == 0
        results = json.loads((out / "keypoints.json").read_text())
        counts[threshold] = len(results)
        # the identical boxes give identical keypoints: the 0.9 one is kept, best first
        scores = np.asarray(results[0]["keypoints"]).reshape(-1, 3)[:, 2]
        confident = scores[scores > 0.2]
        assert results[0]["score"] == pytest.approx(0.9 * confident.mean() if len(confident) else 0.0)
    assert counts == {"0.3": 1, "0.0": 2}


def test_malformed_detection_boxes_name_the_file(tmp_path):
    images = [str(tmp_path / "000000000042.jpg")]
    for content in ([{"image_id": 42, "bbox": 5, "score": 0.9}], [{"image_id": 42, "bbox": [1, 2, 3], "score": 1}]):
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(content))
        with pytest.raises(ImageInputError, match="bad.json"):
            load_boxes(str(bad), images)
