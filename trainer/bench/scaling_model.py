"""Scaling on paper: DDP and ZeRO step time for the COCO recipe on N GPUs x M nodes.

usage: python -m trainer.bench.scaling_model [--markdown docs/scaling.md] [--per-gpu-batch 32]

From quantities of this model (convolution FLOPs per image, parameter count -> gradient bytes;
trainer.model computes both from the layer shapes) and stated hardware figures (HARDWARE,
NETWORKS), with the textbook collective costs:
  ring all-reduce of S bytes over n ranks at B bytes/s per rank and direction:
      2 (n-1)/n * S / B + 2 (n-1) * latency
  on G GPUs x M nodes, hierarchically (NCCL's tree/ring mix is close to it): reduce-scatter and
  all-gather inside the node over NVLink, all-reduce of the node's sum between nodes, whose
  bytes all cross the node's network link:
      2 (G-1)/G * S / B_nvlink + 2 (M-1)/M * S / B_node + latencies
  ZeRO-1/2 move the same bytes as one all-reduce (reduce-scatter of gradients + all-gather of
  updated parameters); ZeRO-3 adds a parameter all-gather for the backward: 1.5x the bytes.
Step time = compute + the communication left exposed. Best case: DDP hides its all-reduce behind
the backward pass (2/3 of compute); ZeRO-1/2 hide the gradient reduce-scatter (half the bytes)
there, but the parameter all-gather follows the optimizer step; ZeRO-3 prefetches its gathers
behind forward and backward alike. Worst case: nothing overlaps. Efficiency = 1-GPU step time /
N-GPU step time at a fixed per-GPU batch (weak scaling, the recipe's 32 per GPU).
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass

FLOPS_PER_TRAINED_IMAGE_FACTOR = 3  # forward + input gradients + weight gradients


@dataclass(frozen=True)
class Gpu:
    name: str
    peak_tflops: float  # dense bf16, vendor data sheet
    nvlink_gbytes: float  # per GPU and direction (data sheet total / 2)
    gpus_per_node: int = 8


HARDWARE = (Gpu("A100 SXM", 312.0, 300.0), Gpu("H100 SXM", 989.0, 450.0))
NETWORKS_GBIT = (100.0, 200.0, 400.0)  # per node (one NIC), Gb/s
UTILISATION = 0.40  # model FLOP utilisation of a BN-heavy conv net in bf16 (an assumption, stated)
LATENCY_S = {"nvlink": 5e-6, "network": 15e-6}  # per ring hop
ZERO_TRAFFIC = {"ddp": 1.0, "zero1": 1.0, "zero2": 1.0, "zero3": 1.5}  # x one all-reduce's bytes
LOADER_SAMPLES_PER_CORE = 960.0  # measured: bench data, recipe pairing, warp on device, 1 worker


def ring_allreduce_s(nbytes: float, ranks: int, bytes_per_s: float, latency_s: float) -> float:
    if ranks <= 1:
        return 0.0
    return 2 * (ranks - 1) / ranks * nbytes / bytes_per_s + 2 * (ranks - 1) * latency_s


def hierarchical_allreduce_s(nbytes: float, gpus_per_node: int, nodes: int, nvlink_bytes_per_s: float,
                             node_bytes_per_s: float) -> float:
    """Intra-node reduce-scatter + all-gather (together one ring all-reduce's cost) and the
    inter-node all-reduce of the node's bytes through its one link."""
    return (ring_allreduce_s(nbytes, gpus_per_node, nvlink_bytes_per_s, LATENCY_S["nvlink"])
            + ring_allreduce_s(nbytes, nodes, node_bytes_per_s, LATENCY_S["network"]))


@dataclass(frozen=True)
class StepModel:
    compute_s: float
    comm_s: float
    overlappable_s: float  # the part of comm_s that can run under compute
    window_s: float  # the compute it can hide behind

    @property
    def best_s(self) -> float:
        return self.compute_s + (self.comm_s - self.overlappable_s) + max(0.0, self.overlappable_s - self.window_s)

    @property
    def worst_s(self) -> float:  # no overlap
        return self.compute_s + self.comm_s


def step_model(flops_per_image: float, per_gpu_batch: int, gradient_bytes: float, gpu: Gpu, gpus: int,
               node_gbit: float, strategy: str = "ddp", utilisation: float = UTILISATION) -> StepModel:
    compute = per_gpu_batch * flops_per_image / (gpu.peak_tflops * 1e12 * utilisation)
    per_node = min(gpus, gpu.gpus_per_node)
    nodes = math.ceil(gpus / per_node)
    comm = ZERO_TRAFFIC[strategy] * hierarchical_allreduce_s(
        gradient_bytes, per_node, nodes, gpu.nvlink_gbytes * 1e9, node_gbit * 1e9 / 8)
    backward = compute * 2 / 3
    if strategy == "ddp":
        return StepModel(compute, comm, comm, backward)
    if strategy == "zero3":
        return StepModel(compute, comm, comm, compute)
    return StepModel(compute, comm, comm / 2, backward)  # ZeRO-1/2: the all-gather is exposed


def model_quantities(stacks: int = 8, features: int = 256, keypoints: int = 17, input_size: int = 256,
                     grad_bytes_per_param: int = 4) -> dict:
    """FLOPs per trained image and gradient bytes (fp32 gradients: DDP with bf16 autocast keeps
    fp32 weights; DeepSpeed bf16 would halve them)."""
    import torch

    from trainer.model import StackedHourglass, count_parameters, forward_flops
    with torch.device("meta"):
        parameters = count_parameters(StackedHourglass(keypoints, stacks, features))
    forward = forward_flops(keypoints, stacks, features, 4, input_size)
    return {"forward_flops": forward, "flops_per_trained_image": FLOPS_PER_TRAINED_IMAGE_FACTOR * forward,
            "parameters": parameters, "gradient_bytes": parameters * grad_bytes_per_param}


def efficiency_table(quantities: dict, per_gpu_batch: int, gpu_counts=(1, 2, 4, 8, 16, 32, 64)) -> list[dict]:
    rows = []
    for gpu in HARDWARE:
        for net in NETWORKS_GBIT:
            for strategy in ("ddp", "zero2", "zero3"):
                single = step_model(quantities["flops_per_trained_image"], per_gpu_batch,
                                    quantities["gradient_bytes"], gpu, 1, net, strategy)
                for gpus in gpu_counts:
                    model = step_model(quantities["flops_per_trained_image"], per_gpu_batch,
                                       quantities["gradient_bytes"], gpu, gpus, net, strategy)
                    rows.append({"gpu": gpu.name, "net_gbit": net, "strategy": strategy, "gpus": gpus,
                                 "compute_ms": 1e3 * model.compute_s, "comm_ms": 1e3 * model.comm_s,
                                 "efficiency_best": single.compute_s / model.best_s,
                                 "efficiency_worst": single.compute_s / model.worst_s,
                                 "images_per_s_per_gpu": per_gpu_batch / model.best_s})
    return rows


def render(quantities: dict, per_gpu_batch: int, loader_rate: float = LOADER_SAMPLES_PER_CORE) -> str:
    rows = efficiency_table(quantities, per_gpu_batch)
    lines = ["# Scaling on paper", "",
             "Generated by `python -m trainer.bench.scaling_model --markdown docs/scaling.md`; the formulas and "
             "every assumption are in trainer/bench/scaling_model.py, and tests/trainer/bench/test_scaling_model.py "
             "checks them against hand-computed values. Nothing here was measured on a GPU: these are projections.", "",
             "## Inputs", "",
             f"- Model (COCO recipe, configs/coco_hg8_256.yaml): 8x256 Stacked Hourglass, 256x256 input, "
             f"{quantities['forward_flops'] / 1e9:.1f} GFLOP forward per image (convolutions, 2 per multiply-add), "
             f"{quantities['flops_per_trained_image'] / 1e9:.0f} GFLOP per trained image; "
             f"{quantities['parameters'] / 1e6:.1f} M parameters = {quantities['gradient_bytes'] / 2**20:.0f} MiB of "
             "fp32 gradients per all-reduce.",
             f"- Per-GPU batch {per_gpu_batch} (the recipe: 32 x 8 GPUs), weak scaling: the global batch grows with N.",
             "- GPUs: " + "; ".join(f"{g.name} {g.peak_tflops:.0f} TFLOP/s bf16 dense, NVLink {g.nvlink_gbytes:.0f} GB/s "
                                     f"per direction, {g.gpus_per_node} per node" for g in HARDWARE)
             + f"; model FLOP utilisation {100 * UTILISATION:.0f}% (assumed).",
             f"- Network: one link per node at {', '.join(f'{n:.0f}' for n in NETWORKS_GBIT)} Gb/s; latency "
             f"{LATENCY_S['nvlink'] * 1e6:.0f} us per NVLink hop, {LATENCY_S['network'] * 1e6:.0f} us per network hop.",
             "- Collectives: hierarchical ring all-reduce; ZeRO-1/2 1.0x and ZeRO-3 1.5x its bytes.", "",
             "## Scaling efficiency (per-GPU throughput vs 1 GPU), best case (overlap with backward) / worst (none)", ""]
    counts = sorted({r["gpus"] for r in rows})
    lines += ["| GPU | network | strategy | " + " | ".join(f"{n} GPU" for n in counts) + " |",
              "|---|---|---|" + "---|" * len(counts)]
    for gpu in HARDWARE:
        for net in NETWORKS_GBIT:
            for strategy in ("ddp", "zero2", "zero3"):
                cells = [r for r in rows if r["gpu"] == gpu.name and r["net_gbit"] == net and r["strategy"] == strategy]
                lines.append(f"| {gpu.name} | {net:.0f} Gb/s | {strategy} | " + " | ".join(
                    f"{100 * r['efficiency_best']:.0f}/{100 * r['efficiency_worst']:.0f}%" for r in cells) + " |")
    lines += ["", "## What it needs and where it stops", ""] + _findings(rows, quantities, per_gpu_batch, loader_rate)
    return "\n".join(lines) + "\n"


def _findings(rows: list[dict], quantities: dict, per_gpu_batch: int, loader_rate: float) -> list[str]:
    out = []
    for gpu in HARDWARE:
        single = next(r for r in rows if r["gpu"] == gpu.name and r["gpus"] == 1 and r["strategy"] == "ddp")
        rate = per_gpu_batch / (single["compute_ms"] / 1e3)
        out.append(f"- {gpu.name}: {single['compute_ms']:.0f} ms of compute per step of {per_gpu_batch} images = "
                   f"{rate:.0f} images/s per GPU; at {loader_rate:.0f} samples/s per loader core (measured here: "
                   f"recipe pairing, warp on the GPU) that needs {math.ceil(rate / loader_rate)} loader core(s) per GPU (usual nodes have 8-16).")
        for net in NETWORKS_GBIT:
            ddp = [r for r in rows if r["gpu"] == gpu.name and r["net_gbit"] == net and r["strategy"] == "ddp"]
            worst_ok = [r["gpus"] for r in ddp if r["efficiency_worst"] >= 0.9]
            best_below = [r["gpus"] for r in ddp if r["efficiency_best"] < 0.9]
            comm64 = ddp[-1]["comm_ms"]
            out.append(f"  - {net:.0f} Gb/s per node, DDP: all-reduce {comm64:.1f} ms at {ddp[-1]['gpus']} GPUs vs "
                       f"{2 / 3 * single['compute_ms']:.0f} ms of backward to hide it in; >= 90% even without overlap "
                       f"up to {max(worst_ok)} GPUs; " + (f"below 90% with overlap from {min(best_below)} GPUs"
                                                            if best_below else "stays >= 90% with overlap to 64 GPUs"))
    optimizer_mib = quantities["parameters"] * 12 / 2**20  # fp32 weights + Adam's two moments
    out.append(f"- ZeRO buys this model nothing: with DDP each GPU holds {optimizer_mib:.0f} MiB of weights and Adam "
               "state, so partitioning it only adds the exposed parameter all-gather (ZeRO-1/2) or 1.5x the bytes "
               "(ZeRO-3). It is there for wider models; DeepSpeed bf16 would halve the gradient bytes (not modelled).")
    out += ["- Beyond the network: at 64 GPUs x 32 the global batch is 2048 (the recipe's is 256); Adam at that batch "
            "needs the learning rate scaled (`optim.scale_lr_by_batch`) and a longer warm-up, and COCO's ~150k "
            "training people give only ~73 steps an epoch. Keeping the global batch at 256 instead leaves 4 images "
            "per GPU at 64 GPUs: compute per step falls 8x while the all-reduce stays the same, and per-GPU "
            "BatchNorm statistics over 4 images degrade (SyncBatchNorm would add a collective per BN layer)."]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", metavar="PATH", help="write the tables here (else stdout)")
    parser.add_argument("--per-gpu-batch", type=int, default=32)
    parser.add_argument("--loader-rate", type=float, default=LOADER_SAMPLES_PER_CORE,
                        help="samples/s one loader core delivers (python -m trainer bench data)")
    args = parser.parse_args(argv)
    text = render(model_quantities(), args.per_gpu_batch, args.loader_rate)
    if args.markdown:
        with open(args.markdown, "w") as handle:
            handle.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
