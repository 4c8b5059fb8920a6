"""Synthetic people: an articulated, front-facing figure with limits on its joint angles, drawn with
shaded tapered limbs, over a photo-like textured background. Pure numpy + cv2.

Joints are kept in a superset of the COCO-17 and MPII-16 sets (JOINTS); the writers pick theirs.
Left and right are the person's: a front-facing person's left side is on the image's right.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

JOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
    "pelvis", "thorax", "upper_neck", "head_top",
)
J = {name: i for i, name in enumerate(JOINTS)}


@dataclass
class Difficulty:
    level: float  # 0 easy .. 1 hard

    @property
    def max_rotation_deg(self) -> float:
        return 10.0 + 50.0 * self.level

    @property
    def occluder_prob(self) -> float:
        return 0.1 + 0.35 * self.level

    @property
    def clutter(self) -> int:
        return int(10 + 25 * self.level)


def parse_difficulty(value: str | float) -> Difficulty:
    named = {"easy": 0.0, "medium": 0.5, "hard": 1.0}
    if isinstance(value, str) and value.lower() in named:
        return Difficulty(named[value.lower()])
    level = float(value)
    if not 0.0 <= level <= 1.0:
        raise ValueError("difficulty must be easy, medium, hard or a number in [0, 1]")
    return Difficulty(level)


def _rot(deg: float) -> np.ndarray:
    r = math.radians(deg)
    return np.array([[math.cos(r), -math.sin(r)], [math.sin(r), math.cos(r)]])


def _down(deg: float) -> np.ndarray:
    """Unit vector pointing down, turned by `deg` towards +x (image right)."""
    r = math.radians(deg)
    return np.array([math.sin(r), math.cos(r)])


@dataclass
class Figure:
    joints: np.ndarray  # len(JOINTS) x 2, image pixels
    height: float  # pixels
    width_factor: float
    yaw: float  # -1..1, head turned towards image left..right
    rotation: float
    colours: dict


def random_pose(rng: np.random.Generator, height: float, centre: tuple[float, float],
                rotation: float) -> Figure:
    """Joint positions of one figure, proportions as fractions of its height."""
    h = height
    wf = rng.uniform(0.65, 1.0)  # body turned away from the camera makes it narrower
    lean = rng.normal(0.0, 8.0)
    p = np.zeros((len(JOINTS), 2))
    torso = _rot(lean)
    p[J["pelvis"]] = (0.0, 0.0)
    p[J["thorax"]] = torso @ (0.0, -0.29 * h)
    p[J["left_hip"]] = torso @ (0.075 * wf * h, 0.0)
    p[J["right_hip"]] = torso @ (-0.075 * wf * h, 0.0)
    p[J["left_shoulder"]] = p[J["thorax"]] + torso @ (0.115 * wf * h, 0.015 * h)
    p[J["right_shoulder"]] = p[J["thorax"]] + torso @ (-0.115 * wf * h, 0.015 * h)
    neck = _rot(lean + rng.normal(0.0, 10.0))
    p[J["upper_neck"]] = p[J["thorax"]] + neck @ (0.0, -0.045 * h)
    head_c = p[J["upper_neck"]] + neck @ (0.0, -0.07 * h)
    p[J["head_top"]] = head_c + neck @ (0.0, -0.068 * h)
    yaw = float(rng.uniform(-0.8, 0.8))
    p[J["nose"]] = head_c + neck @ (0.03 * yaw * h, 0.012 * h)
    for side, s in (("left", 1.0), ("right", -1.0)):
        p[J[f"{side}_eye"]] = head_c + neck @ ((0.021 * s + 0.025 * yaw) * h, -0.01 * h)
        p[J[f"{side}_ear"]] = head_c + neck @ ((0.05 * s + 0.012 * yaw) * h, -0.002 * h)
        # arms: upper arm from hanging (0) to raised overhead (170), elbow bends either way
        up = rng.uniform(-25.0, 170.0) if rng.random() < 0.8 else rng.uniform(-25.0, 40.0)
        flex = rng.uniform(0.0, 145.0) * rng.choice((-1.0, 1.0))
        elbow = p[J[f"{side}_shoulder"]] + torso @ (_down(s * up) * 0.165 * h)
        p[J[f"{side}_elbow"]] = elbow
        p[J[f"{side}_wrist"]] = elbow + torso @ (_down(s * (up + flex)) * 0.145 * h)
        # legs: thigh mostly down, sometimes lifted; the knee only bends backwards-up
        thigh = rng.uniform(-20.0, 45.0) if rng.random() < 0.85 else rng.uniform(30.0, 100.0)
        knee_flex = rng.uniform(0.0, 110.0) * (rng.random() < 0.6)
        knee = p[J[f"{side}_hip"]] + torso @ (_down(s * thigh) * 0.235 * h)
        p[J[f"{side}_knee"]] = knee
        p[J[f"{side}_ankle"]] = knee + torso @ (_down(s * (thigh - knee_flex * 0.8)) * 0.235 * h)
    # turn the whole figure, then place the middle of its extent at `centre`
    p = p @ _rot(rotation).T
    p += np.asarray(centre) - (p.min(axis=0) + p.max(axis=0)) / 2.0
    colours = {
        "skin": tuple(int(c) for c in rng.choice(SKIN_TONES)),
        "shirt": tuple(int(c) for c in rng.integers(20, 236, 3)),
        "pants": tuple(int(c) for c in rng.integers(15, 200, 3)),
        "hair": tuple(int(c) for c in rng.choice(HAIR)),
        "shoes": tuple(int(c) for c in rng.integers(10, 90, 3)),
    }
    return Figure(p, h, wf, yaw, rotation, colours)


SKIN_TONES = np.array([(188, 208, 241), (146, 176, 224), (110, 150, 198), (80, 110, 160),
                       (55, 75, 115), (170, 195, 230)])  # BGR
HAIR = np.array([(20, 20, 25), (30, 50, 90), (60, 110, 170), (150, 150, 155), (20, 30, 60)])


def _shade(colour: tuple, f: float) -> tuple:
    return tuple(int(min(255, max(0, c * f))) for c in colour)


def _limb(canvas: np.ndarray, a: np.ndarray, b: np.ndarray, wa: float, wb: float, colour,
          mask: np.ndarray | None, label: int) -> None:
    """A tapered limb from a to b with rounded ends, a highlight and a darker outline."""
    d = b - a
    n = np.array([-d[1], d[0]]) / (np.hypot(*d) + 1e-9)
    poly = np.array([a + n * wa, b + n * wb, b - n * wb, a - n * wa])
    for target, col, shade in ((canvas, colour, True), (mask, label, False)):
        if target is None:
            continue
        ipoly = np.round(poly * 16).astype(np.int32)  # 4 fractional bits: smooth edges
        cv2.fillConvexPoly(target, ipoly, col if shade else int(col), cv2.LINE_AA if shade else 8, 4)
        for c, w in ((a, wa), (b, wb)):
            cv2.circle(target, tuple(np.round(c * 16).astype(int)), max(1, int(round(w * 16))),
                       col if shade else int(col), -1, cv2.LINE_AA if shade else 8, 4)
        if shade:  # lit from one side: a lighter band, and a dark edge on the other side
            hi = np.array([a + n * wa * 0.55, b + n * wb * 0.55, b + n * wb * 0.1, a + n * wa * 0.1])
            cv2.fillConvexPoly(target, np.round(hi * 16).astype(np.int32), _shade(colour, 1.25),
                               cv2.LINE_AA, 4)
            edge = np.round(np.array([b - n * wb, a - n * wa]) * 16).astype(np.int32)
            cv2.polylines(target, [edge], False, _shade(colour, 0.6), max(1, int(wa * 0.3)),
                          cv2.LINE_AA, 4)


def _ellipse(canvas, mask, centre, axes, angle, colour, label) -> None:
    c = tuple(int(round(v * 16)) for v in centre)
    ax = tuple(max(1, int(round(v * 16))) for v in axes)
    cv2.ellipse(canvas, c, ax, angle, 0, 360, colour, -1, cv2.LINE_AA, 4)
    if mask is not None:
        cv2.ellipse(mask, c, ax, angle, 0, 360, int(label), -1, 8, 4)


def draw_figure(canvas: np.ndarray, fig: Figure, mask: np.ndarray | None, label: int) -> None:
    """Draw the figure on canvas (BGR) and its silhouette as `label` on mask."""
    p, h, col = fig.joints, fig.height, fig.colours
    lw = 0.045 * h  # limb half-width scale
    for side in ("left", "right"):  # legs behind the torso
        _limb(canvas, p[J[f"{side}_hip"]], p[J[f"{side}_knee"]], lw * 1.25, lw * 0.95, col["pants"], mask, label)
        _limb(canvas, p[J[f"{side}_knee"]], p[J[f"{side}_ankle"]], lw * 0.95, lw * 0.7, col["pants"], mask, label)
        foot_dir = np.array([1.0 if side == "left" else -1.0, 0.25]) @ _rot(fig.rotation).T
        _limb(canvas, p[J[f"{side}_ankle"]], p[J[f"{side}_ankle"]] + foot_dir * 0.06 * h,
              lw * 0.55, lw * 0.45, col["shoes"], mask, label)
    hips_mid = (p[J["left_hip"]] + p[J["right_hip"]]) / 2
    shoulders_mid = (p[J["left_shoulder"]] + p[J["right_shoulder"]]) / 2
    torso_w = np.hypot(*(p[J["left_shoulder"]] - p[J["right_shoulder"]])) / 2
    _limb(canvas, shoulders_mid, hips_mid, torso_w * 1.05, torso_w * 0.85, col["shirt"], mask, label)
    _limb(canvas, p[J["thorax"]], p[J["upper_neck"]], lw * 0.6, lw * 0.55, _shade(col["skin"], 0.9), mask, label)
    head_c = (p[J["upper_neck"]] + p[J["head_top"]]) / 2 + (p[J["head_top"]] - p[J["upper_neck"]]) * 0.12
    up = p[J["head_top"]] - p[J["upper_neck"]]
    angle = math.degrees(math.atan2(up[1], up[0])) + 90.0
    _ellipse(canvas, mask, head_c, (0.052 * h, 0.068 * h), angle, col["skin"], label)
    _ellipse(canvas, None, head_c + up * 0.2, (0.05 * h, 0.04 * h), angle, col["hair"], label)
    for side in ("left", "right"):  # a far-turned face hides one ear
        if (side == "left" and fig.yaw > -0.5) or (side == "right" and fig.yaw < 0.5):
            _ellipse(canvas, None, p[J[f"{side}_ear"]], (0.012 * h, 0.02 * h), angle, _shade(col["skin"], 0.8), label)
        _ellipse(canvas, None, p[J[f"{side}_eye"]], (0.009 * h, 0.006 * h), angle, (40, 30, 25), label)
    _ellipse(canvas, None, p[J["nose"]], (0.008 * h, 0.011 * h), angle, _shade(col["skin"], 0.7), label)
    for side in ("left", "right"):  # arms in front of the torso
        _limb(canvas, p[J[f"{side}_shoulder"]], p[J[f"{side}_elbow"]], lw * 0.95, lw * 0.75, col["shirt"], mask, label)
        _limb(canvas, p[J[f"{side}_elbow"]], p[J[f"{side}_wrist"]], lw * 0.65, lw * 0.5, col["skin"], mask, label)
        _ellipse(canvas, mask, p[J[f"{side}_wrist"]], (lw * 0.7, lw * 0.7), 0, _shade(col["skin"], 0.95), label)


def ear_hidden(fig: Figure, side: str) -> bool:
    return (side == "left" and fig.yaw <= -0.5) or (side == "right" and fig.yaw >= 0.5)


def background(rng: np.random.Generator, width: int, height: int, clutter: int) -> np.ndarray:
    """A photo-like backdrop: gradient, multi-octave noise, blurred shapes and sensor grain."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    t = (xx * rng.normal() + yy * rng.normal()) / max(width, height)
    c1, c2 = rng.uniform(30, 220, 3), rng.uniform(30, 220, 3)
    img = c1 + (c2 - c1) * ((t - t.min()) / (np.ptp(t) + 1e-6))[..., None]
    for octave in range(1, 7):  # large blobs to fine texture
        cells = 2 ** octave
        shape = (cells * height // width + 2, cells + 2)
        small = rng.normal(0.0, 1.0, shape + (1,)) + 0.35 * rng.normal(0.0, 1.0, shape + (3,))
        small = small.astype(np.float32)  # mostly brightness, a little colour, as in photos
        amp = 45.0 * 0.7 ** octave
        img += amp * cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(clutter):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = rng.integers(0, 4)
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        s = int(rng.integers(8, max(9, width // 4)))
        if kind == 0:
            cv2.rectangle(img, (x, y), (x + s, y + int(s * rng.uniform(0.3, 2))), colour, -1)
        elif kind == 1:
            cv2.circle(img, (x, y), s // 2, colour, -1, cv2.LINE_AA)
        elif kind == 2:
            cv2.line(img, (x, y), (int(rng.integers(0, width)), int(rng.integers(0, height))),
                     colour, int(rng.integers(1, 6)), cv2.LINE_AA)
        else:  # striped patch: fabric, blinds, bricks
            patch = img[y:y + s, x:x + s]
            stripes = (np.sin(np.arange(patch.shape[0]) * rng.uniform(0.3, 1.2)) > 0)[:, None, None]
            patch[:] = np.where(stripes, np.asarray(colour, np.uint8), patch)
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.6, 1.6))
    return img


def add_grain(rng: np.random.Generator, img: np.ndarray, sigma: float) -> np.ndarray:
    """Sensor-like noise over everything (people included): sets JPEG size and decode cost."""
    noise = rng.normal(0.0, sigma, img.shape[:2] + (1,)).astype(np.float32)
    noise = noise + rng.normal(0.0, sigma * 0.5, img.shape).astype(np.float32)
    return np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)


def draw_occluder(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray, at: np.ndarray,
                  size: float, label: int) -> None:
    """An object in front of the people (a box or a blob) covering the point `at`."""
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    w, h = size * rng.uniform(0.6, 1.4), size * rng.uniform(0.6, 1.4)
    c = at + rng.uniform(-0.3, 0.3, 2) * (w, h)
    if rng.random() < 0.5:
        box = cv2.boxPoints(((float(c[0]), float(c[1])), (float(w), float(h)), float(rng.uniform(0, 90))))
        pts = np.round(box).astype(np.int32)
        cv2.fillConvexPoly(img, pts, colour, cv2.LINE_AA)
        cv2.polylines(img, [pts], True, _shade(colour, 0.55), 2, cv2.LINE_AA)
        cv2.fillConvexPoly(mask, pts, int(label))
    else:
        _ellipse(img, mask, c, (w / 2, h / 2), float(rng.uniform(0, 180)), colour, label)
