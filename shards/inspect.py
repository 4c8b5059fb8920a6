"""`python -m shards inspect DIR --out sheet.png`: a contact sheet of samples with skeletons."""
from __future__ import annotations

import colorsys
import json
import math
import os

import cv2
import numpy as np

from .errors import ShardError
from .manifest import manifest_schema, read_manifest
from .reading import iter_samples
from .schema import KeypointSchema


def _limb_colours(n: int) -> list[tuple[int, int, int]]:
    out = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb(i / max(1, n), 0.85, 1.0)
        out.append((int(b * 255), int(g * 255), int(r * 255)))
    return out


def draw_skeleton(image: np.ndarray, keypoints: list, schema: KeypointSchema, scale: float = 1.0) -> None:
    """Limbs in per-limb colours; hidden joints (v=1) hollow, visible ones filled."""
    colours = _limb_colours(len(schema.skeleton))
    pts = [(int(round(x * scale)), int(round(y * scale)), v) for x, y, v in keypoints]
    for (a, b), colour in zip(schema.skeleton, colours):
        if pts[a][2] > 0 and pts[b][2] > 0:
            cv2.line(image, pts[a][:2], pts[b][:2], colour, 2, cv2.LINE_AA)
    for x, y, v in pts:
        if v > 0:
            cv2.circle(image, (x, y), 3, (255, 255, 255), -1 if v == 2 else 1, cv2.LINE_AA)


def _samples(directory: str, manifest: dict, n: int):
    """Up to n samples spread over the set: every k-th, in manifest order."""
    step = max(1, manifest["num_samples"] // max(1, n))
    index, taken = 0, 0
    for entry in manifest["shards"]:
        # a damaged shard contributes what it has: `python -m shards verify` names the damage
        for sample in iter_samples(os.path.join(directory, entry["name"]), lambda kind, detail: None):
            if "jpg" not in sample or "json" not in sample:
                continue
            if index % step == 0:
                yield sample["__key__"], sample
                taken += 1
                if taken >= n:
                    return
            index += 1


def contact_sheet(directory: str, out_path: str, n: int = 16, tile: int = 192) -> int:
    """Write a PNG grid of up to n samples; returns how many were drawn."""
    manifest = read_manifest(directory)
    schema = manifest_schema(manifest, directory)
    tiles = []
    for key, sample in _samples(directory, manifest, n):
        img = cv2.imdecode(np.frombuffer(sample["jpg"], np.uint8), cv2.IMREAD_COLOR)
        meta = json.loads(sample["json"])
        scale = tile / max(img.shape[:2])
        img = cv2.resize(img, (tile, tile), interpolation=cv2.INTER_AREA)
        draw_skeleton(img, meta["keypoints"], schema, scale)
        x, y, w, h = (v * scale for v in meta["bbox"])
        cv2.rectangle(img, (int(x), int(y)), (int(x + w), int(y + h)), (200, 200, 200), 1)
        cv2.putText(img, key, (3, tile - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(img)
    if not tiles:
        raise ShardError(f"{directory}: no sample could be read: nothing to draw")
    cols = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    sheet = np.zeros((rows * tile, cols * tile, 3), np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        sheet[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] = t
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    ok, png = cv2.imencode(os.path.splitext(out_path)[1] or ".png", sheet)
    if not ok:
        raise ShardError(f"{out_path}: cannot encode an image of this type (use .png or .jpg)")
    with open(out_path, "wb") as f:  # an OSError (read-only, full disk) names the file; imwrite hides it
        f.write(png.tobytes())
    return len(tiles)
