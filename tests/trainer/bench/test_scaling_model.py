"""The paper scaling model's formulas against values computed by hand."""
from __future__ import annotations

import pytest

from trainer.bench.scaling_model import (HARDWARE, hierarchical_allreduce_s, model_quantities, render,
                                         ring_allreduce_s, step_model)
from trainer.model import forward_flops


def test_ring_allreduce_cost():
    # 2 (n-1)/n * S / B: 2 * 3/4 * 1e8 B / 1e10 B/s = 15 ms; latency 2 (n-1) hops
    assert ring_allreduce_s(1e8, 4, 1e10, 0.0) == pytest.approx(0.015)
    assert ring_allreduce_s(0.0, 8, 1.0, 1e-5) == pytest.approx(1.4e-4)
    assert ring_allreduce_s(1e8, 1, 1e10, 1e-5) == 0.0


def test_hierarchical_allreduce_two_nodes():
    # NVLink: 2*7/8*1e8/300e9 + 14*5us = 0.65333 ms; network (100 Gb/s = 12.5 GB/s):
    # 2*1/2*1e8/12.5e9 + 2*15us = 8.03 ms
    assert hierarchical_allreduce_s(1e8, 8, 2, 300e9, 12.5e9) == pytest.approx(0.65333e-3 + 8.03e-3, rel=1e-4)


def test_step_model_overlap_per_strategy():
    a100 = HARDWARE[0]
    compute = 32 * 165e9 / (312e12 * 0.4)  # 42.3 ms
    comm = hierarchical_allreduce_s(1e8, 8, 2, 300e9, 12.5e9)
    ddp = step_model(165e9, 32, 1e8, a100, 16, 100.0, "ddp")
    assert ddp.compute_s == pytest.approx(compute)
    assert ddp.comm_s == pytest.approx(comm)
    assert ddp.best_s == pytest.approx(compute)  # 8.7 ms hides behind a 28 ms backward
    assert ddp.worst_s == pytest.approx(compute + comm)
    zero2 = step_model(165e9, 32, 1e8, a100, 16, 100.0, "zero2")
    assert zero2.best_s == pytest.approx(compute + comm / 2)  # the all-gather stays exposed
    zero3 = step_model(165e9, 32, 1e8, a100, 16, 100.0, "zero3")
    assert zero3.comm_s == pytest.approx(1.5 * comm) and zero3.best_s == pytest.approx(compute)
    single = step_model(165e9, 32, 1e8, a100, 1, 100.0, "ddp")
    assert single.comm_s == 0.0 and single.best_s == single.worst_s == pytest.approx(compute)


def test_model_quantities_and_report():
    quantities = model_quantities()
    assert quantities["forward_flops"] == forward_flops(17, 8, 256, 4, 256)
    assert quantities["flops_per_trained_image"] == 3 * quantities["forward_flops"]
    assert quantities["gradient_bytes"] == 4 * quantities["parameters"]
    text = render(quantities, 32)
    assert "| H100 SXM | 100 Gb/s | ddp | 100/100% |" in text and "64 GPU" in text
