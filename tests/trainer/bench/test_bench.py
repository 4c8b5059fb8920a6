"""Smoke test of the benchmark suite: a tiny preset runs for real and writes its keys (no timing asserts)."""
from __future__ import annotations

import argparse
import json

import pytest

from trainer.bench.cli import add_bench_parser, run_bench
from trainer.bench.report import render_markdown


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_bench_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_train_and_checkpointing_write_their_figures(tmp_path):
    out, doc = tmp_path / "bench.json", tmp_path / "benchmarks.md"
    for part in ("train", "checkpointing"):
        assert run_bench(_parse(["bench", part, "--preset", "smoke", "--json", str(out)])) == 0
        result = json.loads(out.read_text())
        assert result["preset"] == "smoke" and result["machine"]["torch"]
        assert set(result["load_average"]) == {part}
        if part == "train":
            train = result["parts"]["train"]
            assert result["parts"]["peak"]["gflops"] > 0
            for key in ("gflops", "efficiency", "overhead", "bf16", "profile", "bare_step", "full_step"):
                assert key in train
            assert train["train_flops_per_step"] > 0 and train["profile"]["top_ops"]
            assert len(train["bare_step"]["runs_s"]) == 2
            train_result = result
        else:
            ckpt = result["parts"]["checkpointing"]
            assert ckpt["plain_step_peak_bytes"] > 0 and ckpt["checkpointing_step_peak_bytes"] > 0
            assert ckpt["memory_ratio"] > 0 and ckpt["time_ratio"]["median"] > 0
    train_result["parts"].update(result["parts"])
    markdown = render_markdown(train_result)
    for figure in ("Convolution peak", "Training step", "Framework overhead", "bf16", "checkpointing memory",
                   "Time to accuracy", "On paper, for GPUs", "amx_bf16"):
        assert figure in markdown


def test_unknown_part_is_refused():
    with pytest.raises(SystemExit):
        _parse(["bench", "everything", "--json", "x.json"])


def test_data_benchmark_measures_both_pairings_and_both_warp_modes(tmp_path):
    out = tmp_path / "bench.json"
    assert run_bench(_parse(["bench", "data", "--preset", "smoke", "--json", str(out)])) == 0
    result = json.loads(out.read_text())
    data = result["parts"]["data"]
    assert set(data) == {"recipe", "demo"}
    for pairing in data.values():
        rates = pairing["samples_per_s_per_worker"]
        assert set(rates) == {"pipeline", "pipeline_warp_on_device", "raw_loader", "decode_only",
                              "device_stage_on_cpu"}
        assert all(rate > 0 for rate in rates.values())
        for mode in ("warp_in_worker", "warp_on_device"):
            assert pairing[mode]["pipeline_vs_raw"] > 0 and set(pairing[mode]["targets_met"]) == {
                "pipeline >= 3x raw", "pipeline >= 50% of decode"}
        delivered = pairing["delivered"]
        assert delivered["workers"] == 1 and set(delivered["samples_per_s_per_worker"]) == {
            "pipeline", "pipeline_warp_on_device", "pipeline_warp_on_device_without_slots", "raw_loader"}
        assert all(rate > 0 for rate in delivered["samples_per_s_per_worker"].values())
    assert data["recipe"]["input_size"] == [256, 256] and "384 px stored crops" in data["recipe"]["source"]
    markdown = render_markdown(result)
    assert markdown.count("(a) vs (b) raw loader") == 4 and "warp on the device" in markdown
    assert markdown.count("delivered by 1 DataLoader worker(s)") == 4 and "shared-memory slots" in markdown


def test_inference_benchmark_times_the_pyfunc_and_the_served_model(tmp_path):
    out = tmp_path / "bench.json"
    assert run_bench(_parse(["bench", "inference", "--preset", "smoke", "--json", str(out)])) == 0
    inference = json.loads(out.read_text())["parts"]["inference"]
    assert "256px" in inference["model"] and inference["images_per_call"] == 2
    for path in ("pyfunc", "served"):
        assert inference[path]["images_per_s"] > 0 and len(inference[path]["runs_s"]) == 1
    assert inference["served_over_pyfunc_time"]["median"] > 0
    result = json.loads(out.read_text())
    assert "pyfunc vs served" in render_markdown({**result, "parts": {"inference": inference}})
