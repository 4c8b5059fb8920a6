"""`python -m shards synth`: a synthetic pose data set written in the real COCO or MPII formats.

Each image: a textured backdrop, sometimes a crowd of tiny people (one iscrowd=1 annotation)
or a tiny unlabelled person (num_keypoints 0), then 1-4 articulated people (heights 0.3-0.9 of
the image, rotated, overlapping, some cut by the frame: v=0), objects in front of some of them
(joints behind another person or an object: v=1), and sensor grain. Deterministic by seed: image
i of a split depends only on (seed, split, i), whatever the number of workers.
MPII files use MATLAB's 1-based pixel coordinates, like the real ones; the readers subtract 1. The MPII
json files carry no head boxes (as HRNet's / mmpose's do not); the val people's head boxes go to
annotations/gt_valid.mat in the evaluation file's layout, and all of them to the release .mat.
"""
from __future__ import annotations

import json
import os
from typing import Any

import cv2
import numpy as np

from .schema import COCO17, MPII16
from .write import worker_pool
from .synth_figure import (J, Difficulty, add_grain, background, draw_figure, draw_occluder,
                           ear_hidden, random_pose)

WIDTH, HEIGHT = 640, 480
JPEG_QUALITY = 90
CROWD_LABEL, TINY_LABEL, OCCLUDER_LABEL = 250, 251, 255
COCO_JOINTS = [J[n] for n in COCO17.keypoint_names]
MPII_JOINTS = [J[n] for n in MPII16.keypoint_names]
SPLIT_CODE = {"train": 0, "val": 1}


def _mask_box(mask: np.ndarray) -> tuple[list[float], float]:
    x, y, w, h = cv2.boundingRect(mask)
    return [float(x), float(y), float(w), float(h)], float(cv2.countNonZero(mask))


def render_image(seed: int, split: str, index: int, difficulty: Difficulty
                 ) -> tuple[np.ndarray, list[dict], list[dict]]:
    """One image, its labelled people, and its extra annotations (crowd / tiny unlabelled)."""
    rng = np.random.default_rng([seed, SPLIT_CODE[split], index])
    img = background(rng, WIDTH, HEIGHT, difficulty.clutter)
    label = np.zeros((HEIGHT, WIDTH), np.uint8)
    extras: list[dict] = []
    if rng.random() < 0.12:  # a distant crowd: one iscrowd=1 region, nobody labelled
        cx, cy = rng.uniform(0.2, 0.8) * WIDTH, rng.uniform(0.2, 0.5) * HEIGHT
        crowd = np.zeros_like(label)
        for _ in range(int(rng.integers(4, 8))):
            fig = random_pose(rng, rng.uniform(0.07, 0.12) * HEIGHT,
                              (cx + rng.normal(0, 30), cy + rng.normal(0, 8)), 0.0)
            draw_figure(img, fig, crowd, CROWD_LABEL)
        label[crowd > 0] = CROWD_LABEL
        box, _ = _mask_box(crowd)
        extras.append({"iscrowd": 1, "bbox": box, "area": box[2] * box[3]})
    if rng.random() < 0.2:  # a tiny person annotated without keypoints, as COCO has many
        tiny = np.zeros_like(label)
        fig = random_pose(rng, rng.uniform(0.05, 0.08) * HEIGHT,
                          (rng.uniform(0.1, 0.9) * WIDTH, rng.uniform(0.1, 0.9) * HEIGHT), 0.0)
        draw_figure(img, fig, tiny, TINY_LABEL)
        label[tiny > 0] = TINY_LABEL
        box, area = _mask_box(tiny)
        if area > 0:
            extras.append({"iscrowd": 0, "bbox": box, "area": area})
    people, figures = [], []
    max_rot = difficulty.max_rotation_deg
    for p in range(int(rng.integers(1, 5))):
        height = rng.uniform(0.3, 0.9) * HEIGHT
        rotation = float(np.clip(rng.normal(0.0, max_rot / 2.0), -max_rot, max_rot))
        centre = (rng.uniform(-0.05, 1.05) * WIDTH, rng.uniform(0.35, 0.65) * HEIGHT)
        fig = random_pose(rng, height, centre, rotation)
        own = np.zeros_like(label)
        draw_figure(img, fig, own, 1)
        box, area = _mask_box(own)
        if area == 0:  # entirely outside the frame: nobody to annotate
            continue
        label[own > 0] = p + 1
        figures.append((p + 1, fig, box, area))
    for lab, fig, _, _ in figures:
        if rng.random() < difficulty.occluder_prob:
            at = fig.joints[int(rng.integers(0, len(fig.joints)))]
            draw_occluder(rng, img, label, at, fig.height * rng.uniform(0.12, 0.25), OCCLUDER_LABEL)
    for lab, fig, box, area in figures:
        vis = np.zeros(len(fig.joints), np.int64)
        for j, (x, y) in enumerate(fig.joints):
            if not (0 <= x < WIDTH and 0 <= y < HEIGHT):
                continue  # outside the frame: unlabelled
            under = label[int(y), int(x)]
            vis[j] = 1 if under not in (0, lab) else 2
        for side in ("left", "right"):
            if ear_hidden(fig, side) and vis[J[f"{side}_ear"]] == 2:
                vis[J[f"{side}_ear"]] = 1
        head = np.array([fig.joints[J["head_top"]], fig.joints[J["upper_neck"]]])
        # head box 0.6 x 1.1 neck-to-top lengths when upright: diagonal 1.25 of them, the proportion
        # --estimate-head-size assumes for MPII's real boxes; a tilted head's axis-aligned box is larger
        d = float(np.hypot(*(head[0] - head[1])))
        head_box = [float(head[:, 0].min() - 0.3 * d), float(head[:, 1].min() - 0.05 * d),
                    float(head[:, 0].max() + 0.3 * d), float(head[:, 1].max() + 0.05 * d)]
        people.append({"joints": np.round(fig.joints, 2), "vis": vis, "bbox": box, "area": area,
                       "head_box": [round(v, 2) for v in head_box]})
    img = add_grain(rng, img, rng.uniform(5.0, 8.0))
    return img, people, extras


def _render_task(task: tuple) -> dict:
    seed, split, index, level, path = task
    img, people, extras = render_image(seed, split, index, Difficulty(level))
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    with open(path, "wb") as f:
        f.write(buf.tobytes())
    return {"people": people, "extras": extras, "bytes": len(buf)}


def _render_split(out: str, seed: int, split: str, count: int, difficulty: Difficulty,
                  paths: list[str], workers: int) -> list[dict]:
    tasks = [(seed, split, i, difficulty.level, paths[i]) for i in range(count)]
    if workers <= 1 or count < 8:
        return [_render_task(t) for t in tasks]
    with worker_pool(workers) as pool:
        return list(pool.imap(_render_task, tasks, chunksize=4))


def _coco_split(out: str, seed: int, split: str, count: int, first_id: int, next_ann: int,
                difficulty: Difficulty, workers: int) -> tuple[dict, int]:
    img_dir = os.path.join(out, "images", split)
    os.makedirs(img_dir, exist_ok=True)
    ids = list(range(first_id, first_id + count))
    names = [f"{i:012d}.jpg" for i in ids]
    rendered = _render_split(out, seed, split, count, difficulty,
                             [os.path.join(img_dir, n) for n in names], workers)
    images, anns = [], []
    for image_id, name, r in zip(ids, names, rendered):
        images.append({"id": image_id, "file_name": name, "width": WIDTH, "height": HEIGHT})
        for person in r["people"]:
            flat = []
            for j in COCO_JOINTS:
                v = int(person["vis"][j])
                flat += [float(person["joints"][j][0]), float(person["joints"][j][1]), v] if v else [0, 0, 0]
            anns.append(_coco_ann(next_ann, image_id, person["bbox"], person["area"], 0, flat))
            next_ann += 1
        for extra in r["extras"]:
            anns.append(_coco_ann(next_ann, image_id, extra["bbox"], extra["area"], extra["iscrowd"], [0] * 51))
            next_ann += 1
    category = {"id": 1, "name": "person", "supercategory": "person",
                "keypoints": list(COCO17.keypoint_names),
                "skeleton": [[a + 1, b + 1] for a, b in COCO17.skeleton]}
    data = {"info": {"description": "poseforge synthetic people", "seed": seed},
            "images": images, "annotations": anns, "categories": [category]}
    return data, next_ann


def _coco_ann(ann_id: int, image_id: int, box: list[float], area: float, crowd: int, flat: list) -> dict:
    x, y, w, h = box
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": crowd,
            "bbox": box, "area": area, "keypoints": flat,
            "num_keypoints": sum(1 for v in flat[2::3] if v > 0),
            "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]}


def _jittered(ann: dict, rng: np.random.Generator, spread: float, score: float) -> dict:
    x, y, w, h = ann["bbox"]
    jx, jy, jw, jh = rng.normal(0, spread, 4) * (w, h, w, h)
    return {"image_id": ann["image_id"], "category_id": 1, "score": round(score, 4),
            "bbox": [round(float(v), 2) for v in (x + jx, y + jy, max(2.0, w + jw), max(2.0, h + jh))]}


def _detections(data: dict, seed: int) -> list[dict]:
    """A person detector's output: jittered true boxes, a few misses, near-duplicate boxes of some
    people (what OKS-NMS removes) and low-scoring false positives."""
    rng = np.random.default_rng([seed, 99])
    dets = []
    for ann in data["annotations"]:
        if ann["iscrowd"] or rng.random() < 0.05:
            continue
        score = float(rng.uniform(0.5, 1.0))
        dets.append(_jittered(ann, rng, 0.05, score))
        if rng.random() < 0.3:
            dets.append(_jittered(ann, rng, 0.03, score * float(rng.uniform(0.6, 0.95))))
    for img in data["images"]:
        for _ in range(int(rng.integers(0, 3))):
            w, h = rng.uniform(20, 200, 2)
            dets.append({"image_id": img["id"], "category_id": 1, "score": round(float(rng.uniform(0.02, 0.5)), 4),
                         "bbox": [round(float(v), 2) for v in (rng.uniform(0, WIDTH - w), rng.uniform(0, HEIGHT - h), w, h)]})
    return sorted(dets, key=lambda d: (d["image_id"], -d["score"]))


def write_json(path: str, data: Any) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)


def synth_coco(out: str, images: int, val_images: int, seed: int, difficulty: Difficulty,
               workers: int = 1) -> dict:
    train, next_ann = _coco_split(out, seed, "train", images, 1, 1, difficulty, workers)
    val, _ = _coco_split(out, seed, "val", val_images, 1 + images, next_ann, difficulty, workers)
    write_json(os.path.join(out, "annotations", "person_keypoints_train.json"), train)
    write_json(os.path.join(out, "annotations", "person_keypoints_val.json"), val)
    write_json(os.path.join(out, "annotations", "person_detections_val.json"), _detections(val, seed))
    return {"train_people": sum(a["num_keypoints"] > 0 for a in train["annotations"]),
            "val_people": sum(a["num_keypoints"] > 0 for a in val["annotations"])}


def _mpii_person(name: str, person: dict) -> dict:
    """One person in the common json convention (1-based pixel coordinates, -1 = unlabelled)."""
    joints, vis = [], []
    for j in MPII_JOINTS:
        v = int(person["vis"][j])
        joints.append([round(float(c) + 1, 2) for c in person["joints"][j]] if v else [-1.0, -1.0])
        vis.append(1 if v == 2 else 0)
    x, y, w, h = person["bbox"]
    return {"image": name, "center": [round(x + w / 2 + 1, 2), round(y + h / 2 + 1, 2)],
            "scale": round(max(w, h) / 200.0, 4), "joints": joints, "joints_vis": vis,
            "head_box": [round(v + 1, 2) for v in person["head_box"]]}


def synth_mpii(out: str, images: int, val_images: int, seed: int, difficulty: Difficulty,
               workers: int = 1) -> dict:
    from .synth_mat import write_head_boxes_mat, write_release_mat

    img_dir = os.path.join(out, "images")
    os.makedirs(img_dir, exist_ok=True)
    per_split: dict[str, list[dict]] = {}
    all_names: list[str] = []
    offset = 0
    for split, count in (("train", images), ("val", val_images)):
        names = [f"{offset + i:09d}.jpg" for i in range(count)]
        offset += count
        rendered = _render_split(out, seed, split, count, difficulty,
                                 [os.path.join(img_dir, n) for n in names], workers)
        entries = [_mpii_person(n, p) for n, r in zip(names, rendered) for p in r["people"]
                   if (p["vis"][MPII_JOINTS] > 0).any()]
        per_split[split] = entries
        all_names += names
        # like the real train.json / valid.json: no head boxes (those live in gt_valid.mat)
        write_json(os.path.join(out, "annotations", f"{split}.json"),
                   [{k: v for k, v in e.items() if k != "head_box"} for e in entries])
    write_release_mat(os.path.join(out, "annotations", "mpii_human_pose_v1_u12_1.mat"),
                      all_names, per_split["train"] + per_split["val"])
    write_head_boxes_mat(os.path.join(out, "annotations", "gt_valid.mat"), per_split["val"])
    return {"train_people": len(per_split["train"]), "val_people": len(per_split["val"])}
