"""Batch images through reused shared-memory slots (trainer/data/transport.py), with real
DataLoader worker processes. The pinned-memory branch (CUDA) cannot run on this CPU-only
machine and is not tested here."""
from __future__ import annotations

import copy
import gc

import numpy as np
import pytest
import torch

from tests.trainer.data.data_testlib import make_coco_shards, small_config
from trainer.data import build_eval_loader, build_train_loader
from trainer.data.transport import SLOT_KEY, ImageSlots, from_wire, to_wire


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> tuple[str, str]:
    return make_coco_shards(str(tmp_path_factory.mktemp("data")), images=20)


@pytest.fixture
def without_slots():
    """Build loaders the DataLoader's own way (same workers, so the same streams)."""
    def build(make, config, *args):
        config = copy.deepcopy(config)
        config.data.image_slots = False
        loader = make(config, *args)
        assert loader.make_slots is None
        return loader
    return build


def _slot_addresses(loader) -> set[int]:
    return {buffer.data_ptr() for buffers in loader.slots.buffers for buffer in buffers}


def _fields(batch: dict) -> dict:
    """Everything a batch carries, as plain values (tensors copied: they may live in a slot)."""
    return {name: value.clone() if isinstance(value, torch.Tensor) else value
            for name, value in batch.items() if name not in ("data_worker", "data_errors")}


def _assert_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        if isinstance(a[name], torch.Tensor):
            assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name
        else:
            assert a[name] == b[name], name


@pytest.mark.parametrize("warp_on", ["worker", "device"])
def test_slot_batches_equal_dataloader_batches_and_slots_are_reused(coco, warp_on, without_slots):
    train, _ = coco
    config = small_config(train, warp_on=warp_on, workers=2)
    reference = [_fields(b) for b in without_slots(build_train_loader, config, 0, 1, 0)]
    loader = build_train_loader(config, 0, 1, 0)
    used, received = set(), []
    for batch in loader:  # each batch dropped before the next: its slot goes back
        assert SLOT_KEY not in batch and batch["image"].dtype == torch.uint8
        used.add(batch["image"].data_ptr())
        received.append(_fields(batch))
        del batch
    slots = _slot_addresses(loader)
    assert len(slots) == 2 * (2 + 1)  # two workers, prefetch_factor 2 + the batch in use
    assert len(received) == len(reference) > 2 * 3  # more batches than slots: they were reused
    assert used <= slots  # every batch came through a slot
    for got, want in zip(received, reference):
        _assert_equal(got, want)


def test_a_slot_comes_back_only_when_the_last_view_of_its_batch_is_gone(coco, without_slots):
    train, _ = coco
    config = small_config(train, warp_on="device", workers=1)
    reference = [b["image"].clone() for b in without_slots(build_train_loader, config, 0, 1, 0)]
    batches = iter(build_train_loader(config, 0, 1, 0))
    first = next(batches)
    first_slot = first["image"].data_ptr()
    view = first["image"][1:2]  # the batch goes, a view of its images stays
    del first
    gc.collect()
    rest = []
    for batch in batches:
        assert batch["image"].data_ptr() != first_slot  # never handed out again meanwhile
        rest.append(batch["image"].clone())
    assert torch.equal(view, reference[0][1:2])
    assert len(rest) == len(reference) - 1 and all(torch.equal(x, y) for x, y in zip(rest, reference[1:]))


def test_a_trainer_that_keeps_every_batch_gets_them_all_the_usual_way(coco, without_slots):
    train, _ = coco
    config = small_config(train, warp_on="device", workers=1)
    reference = list(without_slots(build_train_loader, config, 0, 1, 0))
    loader = build_train_loader(config, 0, 1, 0)
    kept = list(loader)  # no slot ever comes back: the worker falls back to new memory
    in_slots = [b for b in kept if b["image"].data_ptr() in _slot_addresses(loader)]
    assert len(in_slots) == 3 and len(kept) == len(reference) > 3
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(kept, reference))


def test_eval_batches_through_slots_cover_every_sample_once(coco, without_slots):
    _, val = coco
    config = small_config("", val, workers=2)
    plain = {k: b["image"][i].clone() for b in without_slots(build_eval_loader, config, 0, 1)
             for i, k in enumerate(b["key"])}
    seen = {}
    for batch in build_eval_loader(config, 0, 1):
        for i, key in enumerate(batch["key"]):
            assert key not in seen
            seen[key] = batch["image"][i].clone()
    assert seen.keys() == plain.keys()
    assert all(torch.equal(seen[k], plain[k]) for k in plain)


def test_batches_that_do_not_fit_a_slot_keep_their_images():
    slots = ImageSlots(1, 2, (4, 8, 8, 3))
    big = slots.allocate(0, (4, 9, 8, 3))  # taller than a slot
    batch = {"image": torch.from_numpy(big)}
    slots.seal(batch)
    assert "image" in batch and SLOT_KEY not in batch
    fitting = slots.allocate(0, (2, 8, 6, 3))
    fitting[:] = 7
    batch = {"image": torch.from_numpy(fitting), "keypoints": torch.ones(2, 17, 2)}
    slots.seal(batch)
    to_wire(batch)
    assert batch[SLOT_KEY] == (0, 2, 8, 6, 3) and isinstance(batch["keypoints"], np.ndarray)
    from_wire(batch)
    slots.take(0, batch, pin_memory=False)
    assert batch["image"].shape == (2, 8, 6, 3) and int(batch["image"].min()) == 7
    assert isinstance(batch["keypoints"], torch.Tensor)
