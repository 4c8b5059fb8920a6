"""Rank and world information, process-group set-up and the few collectives the trainer needs.

This is the one module that reads the launcher's environment. Every helper works (as a no-op or
the identity) in a single process without a process group, so callers never branch on it.

Under SLURM we launch one torchrun per node, so only torchrun's variables (RANK, WORLD_SIZE,
LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK) start a group; SLURM_* variables alone never do.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Optional

import torch
import torch.distributed as dist


class DistributedError(RuntimeError):
    """A launch mistake the user can fix (inconsistent launcher environment); the CLI exits 2."""


class CollectiveTimeout(RuntimeError):
    """A collective did not complete within dist.timeout_s: another rank stopped answering."""


@dataclass(frozen=True)
class WorldInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    node_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise DistributedError(f"environment variable {name}={raw!r} is not an integer") from None


def world_from_env(env: Optional[dict[str, str]] = None) -> WorldInfo:
    """WorldInfo from torchrun's variables; a single process when they are absent."""
    env = dict(os.environ) if env is None else env
    if "RANK" not in env and "WORLD_SIZE" not in env:
        return WorldInfo()
    world_size = _env_int(env, "WORLD_SIZE", 1)
    rank = _env_int(env, "RANK", 0)
    local_rank = _env_int(env, "LOCAL_RANK", 0)
    local_world_size = _env_int(env, "LOCAL_WORLD_SIZE", world_size)
    node_rank = _env_int(env, "GROUP_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise DistributedError(f"RANK={rank} is outside WORLD_SIZE={world_size}")
    if not 0 <= local_rank < local_world_size or local_world_size > world_size:
        raise DistributedError(
            f"LOCAL_RANK={local_rank} / LOCAL_WORLD_SIZE={local_world_size} do not fit WORLD_SIZE={world_size}")
    return WorldInfo(rank, local_rank, world_size, local_world_size, node_rank)


# The device collectives run on: nccl needs CUDA tensors, gloo CPU ones.
_collective_device: torch.device = torch.device("cpu")


def init_distributed(world: WorldInfo, timeout_s: float) -> torch.device:
    """Start the process group (nccl + cuda:local_rank, else gloo + cpu); return this rank's device.

    `timeout_s` bounds every collective, so a rank that stops answering fails the job with an
    error instead of hanging it (gloo honours it per collective; nccl through its watchdog).
    """
    global _collective_device
    if torch.cuda.is_available():
        if world.local_rank >= torch.cuda.device_count():
            raise DistributedError(
                f"LOCAL_RANK={world.local_rank} but only {torch.cuda.device_count()} CUDA devices are visible")
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world.world_size == 1 or dist.is_initialized():
        _collective_device = device
        return device
    if device.type == "cuda":
        # Fail fast on NCCL errors and timeouts instead of hanging (the default in recent torch).
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "3")
        dist.init_process_group("nccl", timeout=timedelta(seconds=timeout_s), device_id=device)
    else:
        dist.init_process_group("gloo", timeout=timedelta(seconds=timeout_s))
    _collective_device = device
    return device


_TIMEOUT_MARKERS = ("timed out", "application timeout caused pair closure")


def explain_timeout(error: BaseException, world: WorldInfo, timeout_s: float) -> Optional[CollectiveTimeout]:
    """A CollectiveTimeout naming this rank and the ranks it waited for, when `error` is a
    collective timeout; else None. Gloo words it by where the wait ended: "Timed out waiting
    ...ms for recv", or "Application timeout caused pair closure" (e.g. in DDP's buffer
    broadcast at the start of a forward)."""
    message = str(error).lower()
    if world.world_size == 1 or not isinstance(error, RuntimeError) or not any(
            marker in message for marker in _TIMEOUT_MARKERS):
        return None
    others = [rank for rank in range(world.world_size) if rank != world.rank]
    first_line = str(error).strip().splitlines()[0][:300]
    return CollectiveTimeout(
        f"rank {world.rank} of {world.world_size} waited dist.timeout_s={timeout_s:g} s in a collective for "
        f"rank(s) {', '.join(map(str, others))}: one of them hung, was stopped or died (torchrun's failure "
        f"summary and the ranks' logs say which); stopping instead of hanging ({first_line})")


def teardown() -> None:
    if is_initialized():
        dist.destroy_process_group()


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def barrier() -> None:
    if is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over ranks in place and return it (the tensor itself when not distributed)."""
    if is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(obj: Any) -> list:
    """Every rank's `obj`, indexed by rank (pickled: for small metadata and results only)."""
    if not is_initialized() or dist.get_world_size() == 1:
        return [obj]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """`obj` as held by rank `src`, on every rank."""
    if not is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj if dist.get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def any_rank_true(flag: bool) -> bool:
    """True on every rank when any rank passes True (e.g. a pre-emption signal seen by one rank)."""
    if not is_initialized() or dist.get_world_size() == 1:
        return bool(flag)
    value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_collective_device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def print0(*args: Any, **kwargs: Any) -> None:
    """print() on rank 0 only, flushed so torchrun's interleaved output stays readable."""
    if get_rank() == 0:
        kwargs.setdefault("flush", True)
        print(*args, **kwargs)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now, for a rendezvous or a test server on loopback."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
