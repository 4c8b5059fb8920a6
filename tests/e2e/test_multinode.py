"""Launching without a scheduler. Two "nodes" on loopback: two launch/torchrun_multi_node.sh
agents (1 process each) meet through a c10d rendezvous on 127.0.0.1, get their node ranks from
it, and train one world of size 2, with DDP and then with DeepSpeed ZeRO-2. And the `deepspeed`
launcher example with a hostfile naming only this machine."""
from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from tests.testlib import free_port, LAUNCH, demo_shards, launch_env, train_args  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow

AGENT_TIMEOUT_S = 150
# channels_last stays on (the config default) and bf16 is on: the DeepSpeed backend must cope with
# both (channels_last weights break its byte-view broadcast; bf16 weights need bf16 BN statistics).
DEEPSPEED_ZERO2 = ("checkpoint.every_steps=5", "dist.backend=deepspeed", "dist.zero_stage=2",
                   "precision.dtype=bf16")


def _run_two_agents(tmp_path: Path, args: list[str], **env: str) -> list[str]:
    """Start two agents as two nodes; return their logs once both have exited with status 0."""
    port = free_port()
    agent_env = launch_env(NNODES="2", NPROC_PER_NODE="1", RDZV_ENDPOINT=f"127.0.0.1:{port}",
                           RDZV_ID=f"loopback-{port}", MAX_RESTARTS="0", **env)
    logs = [tmp_path / f"agent{index}.log" for index in range(2)]
    agents = []
    for log in logs:
        with open(log, "w") as handle:
            agents.append(subprocess.Popen(["bash", str(LAUNCH / "torchrun_multi_node.sh"), *args],
                                           env=agent_env, cwd=tmp_path, stdout=handle,
                                           stderr=subprocess.STDOUT, start_new_session=True))
    try:
        codes = [agent.wait(timeout=AGENT_TIMEOUT_S) for agent in agents]
    except subprocess.TimeoutExpired:
        codes = None
    finally:
        for agent in agents:  # each agent leads its own session: stop it and its workers
            if agent.poll() is None:
                os.killpg(agent.pid, signal.SIGKILL)
                agent.wait()
    texts = [log.read_text(errors="replace") for log in logs]
    report = "\n".join(f"--- agent {index} ---\n" + "\n".join(text.splitlines()[-40:])
                       for index, text in enumerate(texts))
    assert codes == [0, 0], f"agent exit codes {codes}\n{report}"
    return texts


def _assert_world_of_two(texts: list[str], output_dir: Path) -> None:
    joined = "\n".join(texts)
    for text in texts:
        assert "--nnodes=2 --nproc-per-node=1 --rdzv-backend=c10d" in text, text[-2000:]
    # 104 samples / (batch 4 x world 2) = 13 steps per epoch; a world of 1 would make 26.
    assert re.search(r"^step 13/13\b", joined, re.M), joined[-3000:]
    assert (output_dir / "checkpoints" / "step_00000013" / "COMPLETE").exists()


def test_two_node_rendezvous_ddp(demo_shards, tmp_path):
    output_dir = tmp_path / "out"
    texts = _run_two_agents(tmp_path, train_args(demo_shards, output_dir, "checkpoint.every_steps=5"))
    _assert_world_of_two(texts, output_dir)
    # One RNG state file per rank: both ranks took part in the checkpoint.
    final = output_dir / "checkpoints" / "step_00000013"
    assert sorted(path.name for path in final.glob("rng_rank*.pt")) == ["rng_rank0.pt", "rng_rank1.pt"]


def test_two_node_rendezvous_deepspeed_zero2(demo_shards, tmp_path):
    output_dir = tmp_path / "out"
    texts = _run_two_agents(tmp_path, train_args(demo_shards, output_dir, *DEEPSPEED_ZERO2),
                            DS_ACCELERATOR="cpu")
    _assert_world_of_two(texts, output_dir)


def test_deepspeed_launcher_with_hostfile(demo_shards, tmp_path):
    output_dir = tmp_path / "out"
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=2\n")
    env = launch_env(HOSTFILE=str(hostfile), NO_SSH_CHECK="1", MASTER_ADDR="127.0.0.1",
                     MASTER_PORT=str(free_port()), DS_ACCELERATOR="cpu")
    result = subprocess.run(["bash", str(LAUNCH / "deepspeed_hostfile_example.sh"),
                             *train_args(demo_shards, output_dir, *DEEPSPEED_ZERO2)],
                            env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=AGENT_TIMEOUT_S)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "--no_local_rank" in output and "--local_rank=" not in output
    assert re.search(r"^step 13/13\b", output, re.M), output[-3000:]
    assert (output_dir / "checkpoints" / "step_00000013" / "COMPLETE").exists()
