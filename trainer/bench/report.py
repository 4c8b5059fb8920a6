"""Render the benchmark JSON (bench/suite.py) as the markdown of docs/benchmarks.md, and the
same figures as the generated block of README.md's benchmark section.

usage: python -m trainer.bench.report bench.json [more.json ...] [--readme README.md] > docs/benchmarks.md
(several files: the parts of separate `bench <part>` runs, merged; each part keeps its own load record)
"""
from __future__ import annotations

import json
import math
import sys
from typing import Any

from trainer.bench.report_compute import (checkpointing_rows, checkpointing_section, compile_rows,
                                          compute_notes, conv_shape_section, load_note, row, train_rows)
from trainer.model.hourglass import forward_flops

# Published dense peaks (TFLOP/s) of the accelerators projected to: vendor data sheets.
GPU_PEAKS_TFLOPS = {"A100 SXM (bf16 dense)": 312.0, "H100 SXM (bf16 dense)": 989.0}
UTILISATIONS = (0.35, 0.50)  # a conv net with BatchNorm: memory-bound layers keep MFU well below 1
DEMO_COMMAND = "bash launch/demo.sh"
README_BEGIN = "<!-- bench-table:begin (generated from the bench JSON by trainer/bench/report.py; do not edit) -->"
README_END = "<!-- bench-table:end -->"


_row = row  # one row format for every part


def _figure_rows(result: dict) -> list[str]:
    parts = result["parts"]
    rows = ["| Figure | Target | Measured | Verdict |", "|---|---|---|---|"]
    rows += train_rows(result) + compile_rows(result) + checkpointing_rows(result)
    scaling = parts.get("scaling")
    scaling_rows = []
    if scaling:
        rates = scaling["images_per_s"]
        speedup = scaling["ddp_speedup_2_over_1"]
        scaling_rows.append(_row(f"Scaling, DDP 2x1 thread vs 1x1 ({scaling['model']})", ">= 1.8x",
                         f"{speedup['median']:.2f}x ({rates['ddp_2']:.2f} vs {rates['ddp_1']:.2f} img/s; "
                         f"best vs best {speedup['of_best']:.2f}x)", speedup["median"] >= 1.8))
        if "zero2_over_ddp" in scaling:
            zero = scaling["zero2_over_ddp"]
            memory = scaling["per_rank_memory"]
            ddp_state = memory["ddp_2"][0]["optimizer_state_bytes"]
            zero_rank = memory["zero2_2"][0]
            scaling_rows.append(_row("DeepSpeed ZeRO-2 vs DDP images/s (2 ranks)", "within 10%",
                             f"{zero['median']:.2f}x ({rates['zero2_2']:.2f} img/s); optimizer state per rank "
                             f"{zero_rank['optimizer_state_bytes'] / 2**20:.1f} MiB (+ fp32 master partition "
                             f"{zero_rank['master_partition_bytes'] / 2**20:.1f} MiB) vs DDP "
                             f"{ddp_state / 2**20:.1f} MiB", zero["median"] >= 0.9))
    rows += [_with_note(r, load_note(result, "scaling")) for r in scaling_rows]
    rows += [_with_note(r, load_note(result, "data")) for r in _data_rows(parts.get("data"))]
    rows += [_with_note(r, load_note(result, "inference")) for r in _inference_rows(parts.get("inference"))]
    rows += [_with_note(r, load_note(result, "evaluation")) for r in _evaluation_rows(parts.get("evaluation"))]
    rows.append(_row("Time to accuracy (demo chain: AP >= 0.60 within 600 s)", "reported",
                     f"`{DEMO_COMMAND}` per seed, then `python -m trainer.bench.time_to_accuracy`: see README",
                     None))
    return rows


def _evaluation_rows(evaluation: dict | None) -> list[str]:
    """Evaluation with and without flip test, predict, and an evaluation's share of an epoch."""
    if not evaluation:
        return []
    flip, plain, predict = evaluation["with_flip"], evaluation["without_flip"], evaluation["predict"]
    setting = (f"{evaluation['model']}, {evaluation['precision']}, {evaluation['threads']} thread(s), "
               f"{evaluation['val_samples']} val samples")
    return [_row(f"Evaluation speed ({setting})", "reported",
                 f"{flip['samples_per_s']:.1f} samples/s with flip test, {plain['samples_per_s']:.1f} without "
                 f"(flip costs {evaluation['flip_cost']:.2f}x); COCO scoring {evaluation['scoring_seconds']:.2f} s",
                 None),
            _row("Evaluation's share of a training epoch (demo sizes: 100 val vs 800 train images)", "reported",
                 f"{100 * flip['demo_share_of_epoch']:.1f}% with flip ({flip['cost_in_train_samples']:.2f} training "
                 f"samples' time per eval sample; training {evaluation['train_samples_per_s']:.1f} samples/s)", None),
            _row(f"`trainer predict` speed ({evaluation['model']}, {predict['precision']}, flip "
                 f"{'on' if predict['flip_test'] else 'off'})", "reported",
                 f"{predict['images_per_s']:.1f} images/s ({predict['people_per_s']:.1f} people/s) on "
                 f"{evaluation['val_images']} synthetic val photos with their boxes", None)]


def _inference_rows(inference: dict | None) -> list[str]:
    """The registered-model package: pyfunc in process vs `mlflow models serve` over loopback."""
    if not inference:
        return []
    return [_row(f"Inference, {inference['model']} (flip test, {inference['images_per_call']} images per "
                 f"call, {inference['threads']} threads): pyfunc vs served", "reported",
                 f"pyfunc {inference['pyfunc']['images_per_s']:.2f} img/s, `mlflow models serve` "
                 f"{inference['served']['images_per_s']:.2f} img/s ({inference['served_over_pyfunc_time']['median']:.2f}x "
                 f"the pyfunc's time per call)", None)]


DATA_MODES = (("warp_on_device", "pipeline_warp_on_device", "warp on the device (default with CUDA)"),
              ("warp_in_worker", "pipeline", "warp in the worker (CPU training)"))


def _with_note(table_row: str, note: str) -> str:
    """A row with the part's under-load note appended to its Measured cell."""
    if not note:
        return table_row
    head, _, verdict_cell = table_row.rstrip(" |").rpartition(" | ")
    return f"{head}{note} | {verdict_cell} |"


def _data_rows(data: dict | None) -> list[str]:
    """Per pairing and warp mode: (a)/(b) and (a)/(c), with the per-worker rates. (b) is always
    the raw loader as mmpose runs it: decode and warp on the CPU."""
    if not data:
        return []
    if "skipped" in data:
        return [_row("Data pipeline", "(a) >= 3x raw loader, >= 50% of decode-only", data["skipped"], None)]
    rows = []
    for pairing, figures in data.items():
        rates = figures["samples_per_s_per_worker"]
        for mode, rate_key, label in DATA_MODES:
            ratios, rate = figures[mode], rates[rate_key]
            projection = ""
            if "on_this_cpu" in ratios:  # the device is this CPU: its warp is timed and counted
                projection = (f"; GPU projection (device warp free, untimed): {ratios['pipeline_vs_raw']:.2f}x, "
                              f"{100 * ratios['pipeline_vs_decode']:.0f}%, (a) {rate:.0f} samples/s")
                ratios, rate = ratios["on_this_cpu"], ratios["on_this_cpu"]["samples_per_s"]
                label += f", device warp on this CPU ({figures['device_stage_cpu_ms_per_sample']:.1f} ms a sample, counted)"
            rows.append(_row(f"Data ({pairing}: {figures['source'].split(';')[0]}), {label}: (a) vs (b) raw "
                             "loader (decode + warp on the CPU)", ">= 3x",
                             f"{ratios['pipeline_vs_raw']:.2f}x: (a) {rate:.0f}, "
                             f"(b) {rates['raw_loader']:.0f} samples/s per worker{projection}",
                             ratios["pipeline_vs_raw"] >= 3.0))
            rows.append(_row(f"Data ({pairing}), {label}: (a) vs (c) decode-only", ">= 50%",
                             f"{100 * ratios['pipeline_vs_decode']:.0f}%: (c) {rates['decode_only']:.0f} "
                             f"samples/s", ratios["pipeline_vs_decode"] >= 0.5))
        rows += _delivered_rows(pairing, figures.get("delivered"))
    return rows


def _delivered_rows(pairing: str, delivered: dict | None) -> list[str]:
    """What DataLoader worker processes hand the trainer, each loader with its own transport."""
    if not delivered:
        return []
    rates, workers = delivered["samples_per_s_per_worker"], delivered["workers"]
    rows = []
    for mode, rate_key, label in DATA_MODES:
        rows.append(_row(f"Data ({pairing}), {label}, delivered by {workers} DataLoader worker(s): (a) vs (b)",
                         "reported", f"{delivered['pipeline_vs_raw'][mode]:.2f}x: (a) {rates[rate_key]:.0f}, "
                         f"(b) {rates['raw_loader']:.0f} samples/s per worker", None))
    rows.append(_row(f"Data ({pairing}), warp on the device, delivered: shared-memory slots vs DataLoader's own "
                     "transport", "reported", f"{delivered['slots_speedup']:.2f}x "
                     f"({rates['pipeline_warp_on_device']:.0f} vs "
                     f"{rates['pipeline_warp_on_device_without_slots']:.0f} samples/s per worker)", None))
    return rows


def _profile_section(train: dict) -> list[str]:
    profile = train.get("profile")
    if not profile:
        return []
    lines = ["## Where the training step's time goes", "",
             f"torch.profiler over one bare step of {train['model']} (wall {profile['wall_s']:.2f} s, "
             f"self CPU total {profile['self_cpu_total_s']:.2f} s).", "",
             "| Layer type | Share of self CPU time |", "|---|---|"]
    lines += [f"| {name} | {100 * share:.1f}% |" for name, share in profile["by_layer_type"].items()]
    if profile.get("conv_only_gflops"):
        lines += ["", f"The convolutions alone (forward and backward) run at {profile['conv_only_gflops']:.1f} "
                      "GFLOP/s inside the step (profiler self time)."]
    lines += ["", "| Op | Calls | Self CPU s | Share |", "|---|---|---|---|"]
    lines += [f"| `{op['op']}` | {op['calls']} | {op['self_cpu_s']:.3f} | {100 * op['share']:.1f}% |"
              for op in profile["top_ops"]]
    return lines + [""]


def _gpu_section(parts: dict[str, Any]) -> list[str]:
    forward = forward_flops(17, 8, 256, 4, 256) / 1e9
    train_per_image = 3 * forward
    lines = ["## On paper, for GPUs", "",
             f"8-stack x 256 Stacked Hourglass at 256x256: {forward:.2f} GFLOP forward per image (convolutions, "
             f"2 per multiply-add), {train_per_image:.1f} GFLOP per trained image (3x).", "",
             "| Accelerator | Peak TFLOP/s | Utilisation | Projected train img/s per GPU |", "|---|---|---|---|"]
    projected = {}
    for name, peak in GPU_PEAKS_TFLOPS.items():
        for share in UTILISATIONS:
            rate = peak * 1e3 * share / train_per_image
            projected[(name, share)] = rate
            lines.append(f"| {name} | {peak:.0f} | {100 * share:.0f}% | {rate:.0f} |")
    per_core = _data_samples_per_core(parts.get("data"))
    lines.append("")
    if per_core:
        worst = max(projected.values())
        lines.append(f"The data pipeline delivered {per_core:.0f} samples/s per CPU core here (256 px inputs "
                     "from 384 px crops, warp and colour jitter on the GPU), so "
                     + ", ".join(f"{math.ceil(rate / per_core)} cores at {rate:.0f} img/s" for rate in
                                 sorted(set(round(r) for r in projected.values())))
                     + f" are needed per GPU. A typical 8-GPU node has 8-16 cores per GPU: the loader keeps "
                       f"up at {'all' if worst / per_core <= 16 else 'the lower'} of these rates.")
    else:
        lines.append("No data-pipeline figure in this run: cores per GPU = projected img/s divided by the "
                     "measured samples/s per core (`python -m trainer bench data`).")
    lines += ["When it does not keep up, the knobs are, in order: `data.workers` (more loader processes per "
              "rank), `data.warp_on: device` if it was set to worker, smaller stored crops "
              "(`shards ... --max-side`), a lower JPEG quality when writing shards (decode time scales "
              "with the bytes), and GPU JPEG decoding (nvJPEG / DALI) so that the CPU only reads tar files.", ""]
    return lines


def _data_samples_per_core(data: dict | None) -> float | None:
    """Samples/s of one loader worker (one core) feeding a GPU: the recipe pairing, warp on the
    device (what data.warp_on=auto does with CUDA), as a DataLoader worker delivers them when
    that was measured, else as the worker makes them."""
    recipe = (data or {}).get("recipe")
    if not recipe or "samples_per_s_per_worker" not in recipe:
        return None
    figures = recipe.get("delivered", recipe)
    return float(figures["samples_per_s_per_worker"]["pipeline_warp_on_device"])


def render_markdown(result: dict, json_path: str = "bench.json") -> str:
    machine, parts = result["machine"], result["parts"]
    isa = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in machine["isa"].items())
    lines = ["# Benchmarks", "",
             f"Generated by {_command_text(result, json_path)} (preset `{result['preset']}`, "
             f"{result.get('duration_s', 0) / 60:.1f} min) with `--markdown docs/benchmarks.md`; regenerate with "
             "`python -m trainer.bench.report bench.json [more.json ...] [--readme README.md] > docs/benchmarks.md`.", "",
             "## Machine", "",
             f"- CPU: {machine['cpu_model']}, {machine['usable_cpus']} usable of {machine['logical_cpus']} "
             f"logical CPUs, {machine['memory_gib']} GiB memory, no GPU",
             f"- ISA: {isa}",
             f"- torch {machine['torch']} (oneDNN {'on' if machine['mkldnn'] else 'off'}), "
             f"Python {machine['python']}, {machine['platform']}",
             f"- Date: {machine['date']}", "",
             "Each figure is the median of several runs after a warm-up; ratios are taken round by round "
             "from interleaved runs (A B A B ...) and the median ratio is quoted. fp32 unless noted; "
             + (f"{result['threads_per_process']} intra-op thread(s) per benchmark process (`--threads`). "
                if result.get("threads_per_process") else "one intra-op thread per core. ")
             + "Every verdict is computed from the figure in its row.", "",
             "## Figures", ""]
    lines += _figure_rows(result)
    lines += ["", "## Noise", ""] + _noise_lines(result) + [""]
    lines += [f"- Note: {note}" for note in result.get("notes", [])] + ([""] if result.get("notes") else [])
    lines += _missed_notes(result)
    lines += checkpointing_section(result) + conv_shape_section(result)
    if "train" in parts:
        lines += _profile_section(parts["train"])
    lines += _gpu_section(parts)
    return "\n".join(lines) + "\n"


def _missed_notes(result: dict) -> list[str]:
    """Why a target was missed, from the figures of this run."""
    parts = result["parts"]
    notes = compute_notes(result)
    scaling = parts.get("scaling")
    if scaling and scaling["ddp_speedup_2_over_1"]["median"] < 1.8:
        notes.append("- DDP scaling below 1.8x: two ranks with one thread each occupy both cores of this "
                     "2-core machine, so any other process (the other jobs running tests here, the gloo "
                     "all-reduce threads, the launcher) takes time from a rank, and the all-reduce of the "
                     "gradients is not overlapped with compute as well on CPU as with NCCL on GPUs. The 1-rank "
                     "run leaves a core free for that work; the 2-rank run does not.")
    if scaling and "zero2_over_ddp" in scaling and scaling["zero2_over_ddp"]["median"] < 0.9:
        notes.append("- ZeRO-2 slower than DDP by more than 10%: on CPU DeepSpeed reduce-scatters the "
                     "gradients in buckets from Python hooks, and copies gradients into its flat fp32 "
                     "partition and parameters back after the step; with gloo none of that overlaps.")
    notes += _data_notes(parts.get("data"))
    return (["## Misses and decisions, from the figures above", ""] + notes + [""]) if notes else []


def _warp_bound(figures: dict) -> str:
    """With the warp in the worker, (a) pays the warp and colour pass that (b) pays too."""
    rates = figures["samples_per_s_per_worker"]
    warp_us = 1e6 / rates["pipeline"] - 1e6 / rates["pipeline_warp_on_device"]
    bound = (1e6 / rates["raw_loader"]) / (1e6 / rates["decode_only"] + warp_us)
    return (f" With the warp in the worker, (a) also pays the warp and colour pass that (b) pays ({warp_us:.0f} us "
            f"a sample: the difference of the two modes), so (a)/(b) is at most "
            f"{bound:.2f}x even if nothing else cost anything.")


def _data_notes(data: dict | None) -> list[str]:
    """A missed (a)/(b) is bounded by (c)/(b): even free augmentation cannot beat decoding the crops."""
    notes = []
    for pairing, figures in (data or {}).items():
        on_cpu = figures.get("warp_on_device", {}).get("on_this_cpu") if isinstance(figures, dict) else None
        if on_cpu and on_cpu["pipeline_vs_raw"] < 3.0:
            stage_ms = figures["device_stage_cpu_ms_per_sample"]
            notes.append(f"- Data, {pairing} pairing, warp on the device when the device is this CPU: the device "
                         f"stage (warp + colour with grid_sample on one thread) costs {stage_ms:.1f} ms a sample, "
                         f"{100 * stage_ms / (1e3 / on_cpu['samples_per_s']):.0f}% of the sample's time, so "
                         f"(a)/(b) is {on_cpu['pipeline_vs_raw']:.2f}x here. That is why `data.warp_on: auto` keeps "
                         "the warp in the workers on CPU; the GPU figures in the same rows are projections.")
    for pairing, figures in (data or {}).items():
        if "samples_per_s_per_worker" not in figures:
            continue
        missed = [label for mode, _, label in DATA_MODES if figures[mode]["pipeline_vs_raw"] < 3.0]
        if not missed:
            continue
        rates = figures["samples_per_s_per_worker"]
        bound = rates["decode_only"] / rates["raw_loader"]
        needed = 3.0 / bound
        crops = figures.get("mean_crop_pixels")
        photos = figures.get("mean_photo_pixels")
        share = (f" The stored crops hold {100 * crops / photos:.0f}% of the pixels of the photos (mean "
                 f"{crops / 1e3:.0f}k vs {photos / 1e3:.0f}k), and JPEG decoding scales with pixels."
                 if crops and photos else "")
        notes.append(
            f"- Data, {pairing} pairing ({figures['source'].split(';')[0]}), {' and '.join(missed)}: (a)/(b) "
            f"cannot exceed (c)/(b) = {bound:.2f}x, decoding the stored crops alone against the whole raw "
            f"loader; 3x needs (a) at {100 * needed:.0f}% of decode-only, and the pipeline reaches "
            f"{100 * figures['warp_on_device']['pipeline_vs_decode']:.0f}% with the warp on the device, "
            f"{100 * figures['warp_in_worker']['pipeline_vs_decode']:.0f}% with it in the worker.{share} "
            "Smaller people in the photos give smaller crops and a larger bound; --max-side trades "
            f"resolution for speed.{_warp_bound(figures) if figures['warp_in_worker']['pipeline_vs_raw'] < 3.0 else ''}")
    for pairing, figures in (data or {}).items():
        if "samples_per_s_per_worker" not in figures:
            continue
        rates = figures["samples_per_s_per_worker"]
        for mode, rate_key, label in DATA_MODES:
            if figures[mode]["pipeline_vs_decode"] >= 0.5:
                continue
            decode_us, extra_us = 1e6 / rates["decode_only"], 1e6 / rates[rate_key] - 1e6 / rates["decode_only"]
            notes.append(
                f"- Data, {pairing} pairing, {label}: (a) is {100 * figures[mode]['pipeline_vs_decode']:.0f}% of "
                f"decode-only: beyond decoding ({decode_us:.0f} us a sample with reading and parsing), each "
                f"sample costs {extra_us:.0f} us (the warp to the input size, augmentation parameters, collation), "
                "which the crop size does not change: the smaller and faster to decode the crops, the larger its "
                "share.")
    return notes


def _noise_lines(result: dict) -> list[str]:
    lines = ["Per part: load average (1, 5, 15 min) before and after, and the share of the CPUs that other "
             "processes used while it ran (from /proc/stat minus the benchmark's own CPU time; above "
             "10% the part's figures are marked as taken under load):", ""]
    for part, load in result.get("load_average", {}).items():
        share = load.get("others_cpu_share")
        busy = " **under load**" if load.get("busy") else ""
        lines.append(f"- {part}: {load['before']} -> {load['after']}"
                     + (f", others {100 * share:.0f}% of the CPUs{busy}" if share is not None else ""))
    train = result["parts"].get("train")
    if train:
        lines.append(f"- run-to-run spread (slowest / fastest) of the bare training step: "
                     f"{train['bare_step']['spread']:.2f}x")
    return lines


def _command_text(result: dict, json_path: str) -> str:
    """The command(s) that measured the result: one run, or one per part when runs were merged."""
    parts = result.get("command_parts") or list(result.get("load_average", {})) or ["all"]
    threads = f" --threads {result['threads_per_process']}" if result.get("threads_per_process") else ""
    if len(parts) == 1:
        return f"`python -m trainer bench {parts[0]}{threads} --json {json_path}`"
    runs = ", then ".join(f"`python -m trainer bench {part}{threads}`" for part in parts)
    return f"{runs} (separate runs, a later one's parts replacing the earlier ones'; merged by " \
           f"`python -m trainer.bench.report {json_path}`)"


def readme_block(result: dict, json_path: str) -> str:
    """The Figures table with the command that measured it, the machine and its load."""
    machine = result["machine"]
    busy = [part for part, load in result.get("load_average", {}).items() if load.get("busy")]
    head = (f"Measured by {_command_text(result, json_path)} "
            f"(preset `{result['preset']}`, {result.get('duration_s', 0) / 60:.0f} min) on {machine['date'][:10]}, "
            f"{machine['cpu_model']}, {machine['usable_cpus']} cores, torch {machine['torch']}. "
            + (f"**Taken under load** (other processes used more than 10% of the CPUs) in: {', '.join(busy)}; "
               "those rows say so. " if busy else "No part ran under load. ")
            + "Details, tables and the reasons for each miss: [docs/benchmarks.md](docs/benchmarks.md).")
    return "\n".join([README_BEGIN, head, "", *_figure_rows(result), README_END])


def rewrite_readme(path: str, result: dict, json_path: str) -> None:
    """Replace the marker-delimited block of `path` with this result's table."""
    with open(path) as handle:
        text = handle.read()
    start, end = text.find(README_BEGIN), text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"{path}: no {README_BEGIN!r} ... {README_END!r} block to rewrite")
    text = text[:start] + readme_block(result, json_path) + text[end + len(README_END):]
    with open(path, "w") as handle:
        handle.write(text)


def merge_results(results: list[dict]) -> dict:
    """Parts of separate runs as one result: later files add their parts, load records and notes."""
    merged = {**results[0], "parts": dict(results[0]["parts"]), "load_average": dict(results[0]["load_average"]),
              "notes": list(results[0].get("notes", [])), "command_parts": list(results[0].get("command_parts", [])),
              "part_dates": {part: results[0]["machine"]["date"] for part in results[0]["parts"]}}
    for other in results[1:]:
        merged["part_dates"].update({part: other["machine"]["date"] for part in other["parts"]})
        merged["parts"].update(other["parts"])
        merged["load_average"].update(other["load_average"])
        merged["notes"] += [n for n in other.get("notes", []) if n not in merged["notes"]]
        merged["command_parts"] += other.get("command_parts", [])
        merged["duration_s"] = merged.get("duration_s", 0) + other.get("duration_s", 0)
    return merged


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    readme = None
    if "--readme" in args:
        index = args.index("--readme")
        readme = args[index + 1] if index + 1 < len(args) else None
        del args[index:index + 2]
    if not args or readme == "":
        print(__doc__.strip().splitlines()[-2], file=sys.stderr)
        return 2
    results = []
    for path in args:
        with open(path) as handle:
            results.append(json.load(handle))
    result = merge_results(results)
    sys.stdout.write(render_markdown(result, " ".join(args)))
    if readme:
        rewrite_readme(readme, result, " ".join(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
