"""The recipe configs match the published recipes point by point, and docs/evaluation.md's table
cites the source of each setting (mmpose hourglass52 COCO config; Newell's MPII code)."""
from __future__ import annotations

from pathlib import Path

import pytest

from trainer.config import load_config, to_dict

REPO = Path(__file__).resolve().parents[2]
# dotted key: (value, the text of the source that docs/evaluation.md quotes for it)
COCO = {
    "model.input_size": ([256, 256], "input_size"),
    "codec.sigma": (2.0, "MSRAHeatmap(sigma=2)"),
    "optim.name": ("adam", "type='Adam', lr=5e-4"),
    "optim.lr": (5e-4, "type='Adam', lr=5e-4"),
    "schedule.warmup_steps": (500, "LinearLR(start_factor=0.001, end=500)"),
    "schedule.warmup_factor": (0.001, "LinearLR(start_factor=0.001, end=500)"),
    "schedule.milestones": ([170, 200], "MultiStepLR(milestones=[170, 200])"),
    "schedule.gamma": (0.1, "x0.1"),
    "schedule.epochs": (210, "max_epochs=210"),
    "data.batch_size": (32, "8xb32"),
    "augment.box_padding": (1.25, "GetBBoxCenterScale(padding=1.25)"),
    "augment.scale_range": ([0.5, 1.5], "RandomBBoxTransform(scale_factor=(0.5, 1.5))"),
    "augment.scale_distribution": ("truncnorm", "truncated normal"),
    "augment.scale_prob": (1.0, "p 1.0"),
    "augment.rotation_max": (80.0, "rotate_factor=80.0, rotate_prob=0.6"),
    "augment.rotation_distribution": ("truncnorm", "truncated normal (sigma 80"),
    "augment.rotation_prob": (0.6, "rotate_factor=80.0, rotate_prob=0.6"),
    "augment.shift_max": (0.16, "shift_factor=0.16, shift_prob=0.3"),
    "augment.shift_prob": (0.3, "shift_factor=0.16, shift_prob=0.3"),
    "augment.flip_prob": (0.5, "RandomFlip"),
    "augment.half_body_prob": (0.3, "RandomHalfBody"),
    "augment.half_body_min_keypoints": (9, "RandomHalfBody"),
    "augment.colour_jitter": (0.0, "no photometric"),
    "eval.flip_test": (True, "flip_test=True, shift_heatmap=True"),
    "eval.flip_shift": (True, "flip_test=True, shift_heatmap=True"),
    "eval.box_score_thr": (0.0, "bbox_score_thr"),
}
MPII = {
    "model.input_size": ([256, 256], "inputRes 256"),
    "codec.sigma": (1.0, "hmGauss 1"),
    "optim.name": ("rmsprop", "optMethod rmsprop"),
    "optim.lr": (2.5e-4, "LR 2.5e-4"),
    "optim.momentum": (0.0, "no momentum"),
    "optim.weight_decay": (0.0, "no weight decay"),
    "schedule.warmup_steps": (0, "none"),
    "schedule.epochs": (100, "nEpochs 100"),
    "data.batch_size": (6, "trainBatch 6"),
    "augment.box_padding": (1.25, "s = s * 1.25"),
    "augment.scale_range": ([0.75, 1.25], "np.random.random() * (1.25 - 0.75) + 0.75"),
    "augment.scale_distribution": ("uniform", "np.random.random() * (1.25 - 0.75) + 0.75"),
    "augment.scale_prob": (1.0, "always"),
    "augment.rotation_max": (30.0, "(np.random.random() * 2 - 1) * 30"),
    "augment.rotation_distribution": ("uniform", "(np.random.random() * 2 - 1) * 30"),
    "augment.rotation_prob": (1.0, "always"),
    "augment.shift_prob": (0.0, "none"),
    "augment.flip_prob": (0.5, "Newell, port"),
    "augment.half_body_prob": (0.0, "none"),
    "eval.flip_test": (True, "on, 1 px"),
    "eval.metric": ("PCKh", "PCKh"),
}


def _get(data: dict, dotted: str):
    for part in dotted.split("."):
        data = data[part]
    return data


@pytest.mark.parametrize("path, recipe", [("configs/coco_hg8_256.yaml", COCO), ("configs/mpii_hg8_256.yaml", MPII)])
def test_recipe_configs_match_the_published_recipes(path, recipe):
    config = to_dict(load_config(REPO / path))
    for key, (value, _) in recipe.items():
        got = _get(config, key)
        assert got == (pytest.approx(value) if isinstance(value, float) else value), key


def test_docs_table_cites_every_setting_and_the_published_accuracy():
    docs = (REPO / "docs" / "evaluation.md").read_text()
    for key, (_, source) in {**COCO, **MPII}.items():
        assert source in docs, f"docs/evaluation.md does not cite {source!r} for {key}"
    for published in ("AP 0.726", "88.1", "90.2", "td-hm_hourglass52_8xb32-210e_coco-256x256.py"):
        assert published in docs
    assert "docs/evaluation.md" in (REPO / "README.md").read_text()
