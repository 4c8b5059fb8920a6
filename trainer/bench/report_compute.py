"""Markdown rows and tables of the compute parts (train, compile, checkpointing) for report.py.

Every verdict is computed here from the figure printed next to it; a part measured while other
processes used the CPUs says so in its rows.
"""
from __future__ import annotations

from typing import Any

MFU_TARGET = 0.75  # training step vs its own convolutions run alone
OVERHEAD_TARGET = 1.05
DEMO_TRAINING_STEPS = 744  # launch/demo.sh: 12 epochs x 62 steps (2012 people, batch 16 x 2 ranks; README)


INCONCLUSIVE = "inconclusive"


def verdict(ok: bool | str | None) -> str:
    if ok == INCONCLUSIVE:
        return "**inconclusive** (the noise straddles the target)"
    return "n/a" if ok is None else ("met" if ok else "**missed**")


def round_verdict(rounds: list[float], median: float, target: float, at_most: bool) -> bool | str:
    """met/missed from the median, unless the target lies inside the middle half of the round-by-
    round figures: then the rounds do not resolve the difference and the verdict is inconclusive."""
    ordered = sorted(rounds)
    if len(ordered) >= 3:
        low, high = ordered[len(ordered) // 4], ordered[-1 - len(ordered) // 4]
        if low <= target <= high:
            return INCONCLUSIVE
    return median <= target if at_most else median >= target


def row(figure: str, target: str, measured: str, ok: bool | str | None) -> str:
    return f"| {figure} | {target} | {measured} | {verdict(ok)} |"


def load_note(result: dict, part: str) -> str:
    """' [under load: ...]' when other processes used more than the threshold of the CPUs, and
    ' [measured DATE]' for a part merged in from a run of another day."""
    note = ""
    date = result.get("part_dates", {}).get(part, "")[:10]
    if date and date != result["machine"]["date"][:10]:
        note += f" [measured {date}, an earlier run; see the notes]"
    load = result.get("load_average", {}).get(part, {})
    if load.get("busy"):
        note += f" [under load: other processes used {100 * load['others_cpu_share']:.0f}% of the CPUs]"
    return note


def train_rows(result: dict) -> list[str]:
    train = result["parts"].get("train")
    if not train:
        return []
    note = load_note(result, "train")
    rows = []
    for name, rates in train["conv_rates"].items():
        forward, both = rates["forward"], rates["train"]
        rows.append(row(f"Convolution rate at the model's own layer shapes ({train['model']}), {name}",
                        "reference", f"forward {forward['gflops']:.0f} GFLOP/s, forward + backward "
                        f"{both['gflops']:.0f} GFLOP/s (median of {train['repeats']} rounds, each shape x"
                        f"{train['sweep_repeats']}; run spread {both['spread']:.2f}x){note}", None))
    for name, mfu in train["mfu"].items():
        rows.append(row(f"Training step {name}: model FLOP utilisation (step rate / its convolutions' "
                        "forward + backward rate)", f">= {100 * MFU_TARGET:.0f}%",
                        f"{100 * mfu['median']:.0f}% ({mfu['step_gflops']:.0f} GFLOP/s; per round "
                        f"{', '.join(f'{100 * r:.0f}%' for r in mfu['rounds'])}){note}",
                        round_verdict(mfu["rounds"], mfu["median"], MFU_TARGET, at_most=False)))
    over = train["overhead"]
    rows.append(row("Framework overhead: full loop step (targets, loss per stack, backend step with "
                    "gradient norm, per-step collective, metrics.jsonl write) vs bare step, paired",
                    f"<= +{100 * (OVERHEAD_TARGET - 1):.0f}%",
                    f"{100 * (over['median'] - 1):+.1f}% (median of per-round ratios "
                    f"{', '.join(f'{r:.3f}' for r in over['rounds'])}; bare step "
                    f"{train['bare_step']['median_s']:.2f} s, {train['images_per_s']:.2f} img/s){note}",
                    round_verdict(over["rounds"], over["median"], OVERHEAD_TARGET, at_most=True)))
    if "bf16" in train:
        ratio = train["bf16"]["time_ratio_bf16_over_fp32"]
        rows.append(row("bf16 autocast vs fp32 step time", "reported",
                        f"{ratio['median']:.2f}x the fp32 time (best vs best {ratio['of_best']:.2f}x){note}", None))
    return rows


def compile_break_even(fig: dict) -> float | None:
    """Steps after which compiling is repaid, from the paired ratio printed next to it (None: the
    compiled step is not faster)."""
    ratio = fig["time_ratio_compiled_over_eager"]["median"]
    saved = fig["eager_step"]["median_s"] * (1.0 - ratio)
    return fig["compile_s"] / saved if saved > 0 else None


def compile_rows(result: dict) -> list[str]:
    comp = result["parts"].get("compile")
    if not comp:
        return []
    note = load_note(result, "compile")
    rows = []
    for name in ("fp32", "bf16"):
        if name not in comp:
            continue
        fig = comp[name]
        ratio = fig["time_ratio_compiled_over_eager"]
        even = compile_break_even(fig)
        repaid = f"repaid after {even:.0f} steps" if even is not None else "never repaid (not faster)"
        rows.append(row(f"torch.compile ({comp['backend']}) vs eager step time, {comp['model']}, {name}",
                        "reported", f"{ratio['median']:.2f}x the eager time (per round "
                        f"{', '.join(f'{r:.2f}' for r in ratio['rounds'])}); compile {fig['compile_s']:.0f} s "
                        f"on its own, {repaid}; eager {fig['eager_step']['median_s']:.3f} s, compiled "
                        f"{fig['compiled_step']['median_s']:.3f} s a step{note}", None))
    return rows


def _combined(memory_ok: bool, time_ok: bool | str) -> bool | str:
    """A memory-and-time target: memory decides a miss on its own (it is load-free); else time."""
    return False if not memory_ok else time_ok


def checkpointing_rows(result: dict) -> list[str]:
    ckpt = result["parts"].get("checkpointing")
    if not ckpt:
        return []
    note = load_note(result, "checkpointing")
    (all_memory, all_time), (cheap_memory, cheap_time) = ckpt["targets"]["all_stacks"], ckpt["targets"]["cheap_setting"]
    stacks = str(ckpt["settings"][-1])
    rows = []
    for batch, table in ckpt["tables"].items():
        fig = table["rows"][stacks]
        ratio = fig["time_ratio"]
        rows.append(row(f"Gradient checkpointing, all stacks, {ckpt['model']}, batch {batch}",
                        f"<= {100 * all_memory:.0f}% memory for <= {all_time}x time",
                        f"{100 * fig['memory_ratio']:.0f}% of the plain step's peak, {ratio['median']:.2f}x its "
                        f"time (per round {', '.join(f'{r:.2f}' for r in ratio['rounds'])}){note}",
                        _combined(fig["memory_ratio"] <= all_memory,
                                  round_verdict(ratio["rounds"], ratio["median"], all_time, at_most=True))))
        verdicts = {k: _combined(f["memory_ratio"] <= cheap_memory,
                                 round_verdict(f["time_ratio"]["rounds"], f["time_ratio"]["median"], cheap_time, True))
                    for k, f in table["rows"].items() if k != "0"}
        met = [k for k, v in verdicts.items() if v is True]
        open_ = [k for k, v in verdicts.items() if v == INCONCLUSIVE]
        ok: bool | str = True if met else (INCONCLUSIVE if open_ else False)
        small = [k for k, f in table["rows"].items() if k != "0" and f["memory_ratio"] <= cheap_memory]
        measured = (f"met by k = {', '.join(met)}" if met else
                    f"within {100 * cheap_memory:.0f}% of the memory: k = {', '.join(small) or 'none'}, at "
                    + (", ".join(f"{table['rows'][k]['time_ratio']['median']:.2f}x" for k in small) or "-")
                    + f"; within {cheap_time}x: k = "
                    + (", ".join(k for k, f in table["rows"].items() if k != "0"
                                 and f["time_ratio"]["median"] <= cheap_time) or "none"))
        rows.append(row(f"Gradient checkpointing, a cheap setting (first k stacks), batch {batch}",
                        f"some setting <= {100 * cheap_memory:.0f}% for <= {cheap_time}x", measured + note, ok))
    return rows


def checkpointing_section(result: dict) -> list[str]:
    ckpt = result["parts"].get("checkpointing")
    if not ckpt:
        return []
    lines = ["## Gradient checkpointing: memory vs step time", "",
             f"{ckpt['model']}, `model.gradient_checkpointing: true` with `model.checkpoint_stacks: k` "
             f"(the first k stacks; 0 = off). Peak RSS of one step above the resident model, gradients "
             f"and optimizer state, each setting in its own process; step times from "
             f"{ckpt['rounds']} interleaved round(s) of all settings in one process, ratios taken within a "
             f"round.{load_note(result, 'checkpointing')}", "",
             "| Batch | Stacks checkpointed | Step peak | vs none | Step time | vs none (per round) |",
             "|---|---|---|---|---|---|"]
    for batch, table in ckpt["tables"].items():
        for k, fig in table["rows"].items():
            lines.append(f"| {batch} | {k} | {fig['step_peak_bytes'] / 2**30:.2f} GiB | "
                         f"{100 * fig['memory_ratio']:.0f}% | {fig['step']['median_s']:.2f} s | "
                         f"{fig['time_ratio']['median']:.2f}x ({', '.join(f'{r:.2f}' for r in fig['time_ratio']['rounds'])}) |")
    return lines + [""]


def conv_shape_section(result: dict) -> list[str]:
    train = result["parts"].get("train")
    if not train or not train.get("per_shape_fp32_train"):
        return []
    lines = ["## Convolution rate per layer shape", "",
             f"fp32, forward + backward, {train['model']}: the distinct shapes with the largest share of the "
             f"model's convolution FLOPs (median of {train['sweep_repeats']} calls each).", "",
             "| Shape (in->out kernel/stride @input) | Count | FLOP share | GFLOP/s |", "|---|---|---|---|"]
    lines += [f"| {r['shape']} | {r['count']} | {100 * r['flop_share']:.1f}% | {r['gflops']:.0f} |"
              for r in train["per_shape_fp32_train"]]
    return lines + [""]


def compute_notes(result: dict) -> list[str]:
    """Why a compute target was missed, and what the compile figures decide, from this run's figures."""
    parts: dict[str, Any] = result["parts"]
    notes = []
    comp = parts.get("compile")
    for name in ("fp32", "bf16"):
        if comp and name in comp:
            even = compile_break_even(comp[name])
            repaid = even is not None and even < DEMO_TRAINING_STEPS
            notes.append(f"- torch.compile on CPU ({name}, {comp['model']}): "
                         + (f"it repays its {comp[name]['compile_s']:.0f} s of compilation after {even:.0f} steps"
                            if even is not None else "it is not faster per step, so it never repays its "
                            f"{comp[name]['compile_s']:.0f} s of compilation")
                         + f"; the demo trains {DEMO_TRAINING_STEPS} steps, so compiling "
                         + ("would pay off there" if repaid else "does not pay off there")
                         + ". `model.compile: auto` is off on CPU (trainer/model/compiling.py); `true` is for a "
                           "machine where these rows show a per-step gain.")
    train = parts.get("train")
    if train and any(m["median"] < MFU_TARGET for m in train["mfu"].values()):
        shares = train.get("profile", {}).get("by_layer_type", {})
        notes.append(f"- MFU below {100 * MFU_TARGET:.0f}%: the convolutions take {100 * shares.get('conv', 0):.0f}% "
                     "of the step's CPU time in the profile below; the rest is BatchNorm, ReLU, adds, pooling, "
                     "upsampling and the optimizer, memory-bound work that moves whole activations for a few "
                     "FLOPs each. Fusing it is what torch.compile would do; the compile rows show what it gains "
                     "on this CPU.")
        slow = [op for op in train.get("profile", {}).get("top_ops", []) if "_slow_conv2d" in op["op"]]
        if slow:
            notes.append(f"- The profile shows fp32 convolutions running through PyTorch's own GEMM path "
                         f"(`{slow[0]['op']}`, {slow[0]['calls']} calls: the 1x1 convolutions) rather than oneDNN "
                         f"at {train['threads']} thread(s) and batch {train['model'].rsplit(' ', 1)[-1]}; the "
                         "convolution sweep dispatches the same way, so the MFU compares like with like.")
    ckpt = parts.get("checkpointing")
    if ckpt:
        stacks = ckpt["settings"][-1]
        notes.append(f"- Checkpointing k of {stacks} stacks saves about k/{stacks} of the stacks' activations and "
                     f"recomputes k/{stacks} of the forward (about k/{3 * stacks} of a step): at most 1.06x allows "
                     f"k/{3 * stacks} <= 0.06, i.e. k <= {int(0.18 * stacks)}, which saves at most "
                     f"{100 * int(0.18 * stacks) / stacks:.0f}% of the stacks' activations. A finer unit "
                     "(recomputing only BatchNorm and ReLU inside each residual, keeping the convolution outputs: "
                     "about half of a residual's saved activations) would be the next step; it is not built."
                     + (f" Its cost would be the forward share of BatchNorm and ReLU, which together take "
                        f"{100 * (shares.get('batchnorm', 0) + shares.get('relu', 0)):.0f}% of the step (forward and "
                        "backward) in the profile below." if (shares := (train or {}).get("profile", {})
                                                             .get("by_layer_type")) else ""))
    return notes
