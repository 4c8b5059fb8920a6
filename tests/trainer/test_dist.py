"""World info from the launcher environment, helpers without a group, real 2-process collectives
and the collective timeout (a silent rank fails the job instead of hanging it)."""
from __future__ import annotations

import pytest
import torch

from tests.trainer.backends.backend_worker import launch
from trainer import dist
from trainer.dist import DistributedError, WorldInfo, world_from_env

TORCHRUN_ENV = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4", "GROUP_RANK": "1"}


def test_world_from_torchrun_variables():
    world = world_from_env(TORCHRUN_ENV)
    assert world == WorldInfo(rank=5, local_rank=1, world_size=8, local_world_size=4, node_rank=1)
    assert not world.is_main


def test_single_process_without_launcher_and_under_slurm_alone():
    assert world_from_env({}) == WorldInfo() and WorldInfo().is_main
    # Under SLURM we launch torchrun per node: SLURM's own variables never start a group.
    slurm = {"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1", "SLURM_NODEID": "1"}
    assert world_from_env(slurm) == WorldInfo()


@pytest.mark.parametrize("change, message", [
    ({"RANK": "8"}, "RANK=8 is outside WORLD_SIZE=8"),
    ({"WORLD_SIZE": "eight"}, "WORLD_SIZE='eight' is not an integer"),
    ({"LOCAL_RANK": "4"}, "LOCAL_RANK=4"),
])
def test_inconsistent_environment_is_a_clear_error(change, message):
    with pytest.raises(DistributedError, match=message):
        world_from_env({**TORCHRUN_ENV, **change})


def test_helpers_are_identity_without_a_group():
    assert not dist.is_initialized()
    assert dist.init_distributed(WorldInfo(), timeout_s=5) == torch.device("cpu")
    assert not dist.is_initialized()  # world size 1: no group
    tensor = torch.tensor([2.0])
    assert dist.all_reduce_sum(tensor) is tensor and float(tensor) == 2.0
    assert dist.all_gather_objects({"a": 1}) == [{"a": 1}]
    assert dist.broadcast_object("x") == "x"
    assert dist.any_rank_true(True) and not dist.any_rank_true(False)
    dist.barrier()
    dist.teardown()


def test_print0_prints_on_rank_zero(capsys):
    dist.print0("hello", 3)
    assert capsys.readouterr().out == "hello 3\n"


def test_collectives_two_processes(tmp_path):
    rank0, rank1 = launch("collectives", tmp_path, 90)
    for rank, result in enumerate((rank0, rank1)):
        assert result["sum"] == 3.0
        assert result["gathered"] == [{"rank": 0}, {"rank": 1}]
        assert result["broadcast"] == "from 0"
        assert result["any_true"] is True and result["any_false"] is False
        assert result["world"] == [rank, rank, 2, 2, 0]


def test_collective_timeout_fails_instead_of_hanging(tmp_path):
    """Rank 1 never joins an all-reduce: rank 0 raises after ~timeout_s (3 s), not a hang."""
    (rank0,) = launch("timeout", tmp_path, 90, "3")
    assert rank0["error"] is not None
    assert 2.0 <= rank0["seconds"] < 30, rank0


@pytest.mark.parametrize("message", ["[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Timed out waiting "
                                     "10000ms for recv operation to complete",
                                     "Application timeout caused pair closure"])
def test_gloo_timeouts_are_named_whatever_their_wording(message):
    world = WorldInfo(rank=0, world_size=3)
    explained = dist.explain_timeout(RuntimeError(message), world, 10.0)
    assert isinstance(explained, dist.CollectiveTimeout)
    assert str(explained).startswith("rank 0 of 3 waited dist.timeout_s=10 s in a collective for rank(s) 1, 2")
    assert dist.explain_timeout(RuntimeError("CUDA out of memory"), world, 10.0) is None
    assert dist.explain_timeout(RuntimeError(message), WorldInfo(), 10.0) is None
