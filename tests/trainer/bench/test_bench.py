"""Smoke test of the benchmark suite: a tiny preset runs for real and writes its keys (no timing asserts)."""
from __future__ import annotations

import argparse
import json

import pytest

from trainer.bench.cli import add_bench_parser, run_bench
from trainer.bench.report import README_BEGIN, README_END, merge_results, render_markdown, rewrite_readme


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_bench_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_compute_parts_write_their_figures(tmp_path):
    out = tmp_path / "bench.json"
    parts = ("train", "compile", "checkpointing")
    results = {}
    for part in parts:
        assert run_bench(_parse(["bench", part, "--preset", "smoke", "--json", str(out)])) == 0
        results[part] = json.loads(out.read_text())
        assert results[part]["preset"] == "smoke" and results[part]["machine"]["torch"]
        load = results[part]["load_average"][part]
        assert set(load) == {"before", "after", "others_cpu_share", "busy"}
    train = results["train"]["parts"]["train"]
    assert train["conv_rates"]["fp32"]["train"]["gflops"] > 0 and train["conv_rates"]["fp32"]["forward"]["gflops"] > 0
    assert 0 < train["mfu"]["fp32"]["median"] and len(train["mfu"]["fp32"]["rounds"]) == 2
    assert train["overhead"]["median"] > 0 and train["profile"]["top_ops"] and train["per_shape_fp32_train"]
    compiled = results["compile"]["parts"]["compile"]
    assert compiled["backend"] == "aot_eager" and compiled["fp32"]["first_step_s"] > 0
    assert compiled["fp32"]["time_ratio_compiled_over_eager"]["median"] > 0
    ckpt = results["checkpointing"]["parts"]["checkpointing"]
    assert ckpt["settings"] == [0, 1] and set(ckpt["tables"]) == {"2"}
    for table in ckpt["tables"].values():
        assert table["rows"]["0"]["memory_ratio"] == 1.0 and table["rows"]["1"]["step_peak_bytes"] > 0
        assert isinstance(table["all_stacks_met"], bool) and isinstance(table["cheap_setting_met"], bool)
    merged = merge_results([results[part] for part in parts])  # separate runs, one report
    assert set(merged["parts"]) == set(parts) and merged["command_parts"] == list(parts)
    merged["load_average"]["compile"].update(busy=True, others_cpu_share=0.5)  # how a busy part reads
    markdown = render_markdown(merged)
    for figure in ("own layer shapes", "model FLOP utilisation", "Framework overhead", "torch.compile (aot_eager)",
                   "Gradient checkpointing, all stacks", "memory vs step time", "Time to accuracy",
                   "On paper, for GPUs", "amx_bf16", "under load: other processes used 50%"):
        assert figure in markdown, figure
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_BEGIN}\nold table\n{README_END}\noutro\n")
    rewrite_readme(str(readme), merged, "bench.json")
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old table" not in text
    assert "`python -m trainer bench train`, then `python -m trainer bench compile`, then `python -m trainer bench checkpointing` (separate runs" in text and "model FLOP utilisation" in text and "**Taken under load**" in text


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


def test_evaluation_benchmark_times_eval_with_and_without_flip_and_predict(tmp_path):
    out = tmp_path / "bench.json"
    assert run_bench(_parse(["bench", "evaluation", "--preset", "smoke", "--json", str(out)])) == 0
    result = json.loads(out.read_text())
    evaluation = result["parts"]["evaluation"]
    assert evaluation["model"].endswith("(demo_cpu.yaml)") and evaluation["val_images"] == 4
    # every labelled, non-crowd person of the 4 synthetic val photos is one evaluation sample
    assert evaluation["val_samples"] >= 4 and evaluation["val_samples"] == round(
        evaluation["predict"]["people_per_s"] / evaluation["predict"]["images_per_s"] * 4)
    for name in ("with_flip", "without_flip"):
        assert evaluation[name]["samples_per_s"] > 0 and len(evaluation[name]["runs_s"]) == 1
        share = evaluation[name]["cost_in_train_samples"] * 100 / 800
        assert evaluation[name]["demo_share_of_epoch"] == pytest.approx(share)
    assert evaluation["flip_cost"] > 0 and evaluation["train_samples_per_s"] > 0
    markdown = render_markdown(result)
    assert "Evaluation speed" in markdown and "share of a training epoch" in markdown and "`trainer predict` speed" in markdown
