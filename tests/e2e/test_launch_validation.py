"""Every launch script runs the preflight (`python -m trainer check`) before it launches or queues
anything, and prints the command it runs. (The launches themselves: test_multinode.py and test_slurm.py.)"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.testlib import DEMO_CONFIG, LAUNCH, demo_shards, launch_env  # noqa: F401 (fixture)

BAD_ARGS = ["--config", str(DEMO_CONFIG), "model.stakcs=2"]
SCRIPTS = {
    "torchrun_single_node.sh": ([], {}),
    "torchrun_multi_node.sh": ([], {"RDZV_ENDPOINT": "127.0.0.1:29400", "NNODES": "2"}),
    "deepspeed_hostfile_example.sh": ([], {"HOSTFILE": "hostfile"}),
    "submit_slurm.sh": (["--time=10:00", "--"], {}),
}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_bad_config_exits_2_before_launching(script, tmp_path):
    leading, env = SCRIPTS[script]
    (tmp_path / "hostfile").write_text("localhost slots=1\n")
    result = subprocess.run(["bash", str(LAUNCH / script), *leading, *BAD_ARGS],
                            env=launch_env(**env), cwd=tmp_path, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2, result
    assert "unknown key 'model.stakcs'" in result.stderr and "nothing was launched" in result.stderr
    assert "poseforge: running:" not in result.stdout


def _python_shim(tmp_path: Path) -> Path:
    """An interpreter that records a torchrun command line instead of running it."""
    shim = tmp_path / "python"
    shim.write_text(f"""#!/bin/sh
if [ "$1 $2" = "-m torch.distributed.run" ]; then printf '%s\\n' "$@" > {tmp_path}/torchrun_args; exit 0; fi
exec {sys.executable} "$@"
""")
    shim.chmod(0o755)
    return shim


def test_single_node_command_line(demo_shards, tmp_path):
    shim = _python_shim(tmp_path)
    args = ["--config", str(DEMO_CONFIG), f"data.train_shards={demo_shards / 'train'}",
            f"data.val_shards={demo_shards / 'val'}", "model.stacks=1", "output_dir=runs/x y"]
    result = subprocess.run(["bash", str(LAUNCH / "torchrun_single_node.sh"), *args],
                            env={**launch_env(NPROC_PER_NODE="3"), "PYTHON": str(shim)},
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result
    assert "poseforge: check OK" in result.stdout
    assert "poseforge: running:" in result.stdout and r"output_dir=runs/x\ y" in result.stdout
    recorded = (tmp_path / "torchrun_args").read_text().splitlines()
    assert recorded[:3] == ["-m", "torch.distributed.run", "--standalone"]
    assert "--nproc-per-node=3" in recorded
    assert any(arg.startswith("--signals-to-handle=") and "SIGUSR1" in arg for arg in recorded)
    assert recorded[recorded.index("trainer") - 1:] == ["-m", "trainer", "train", *args]
