import subprocess
import sys
from pathlib import Path

import pytest

from trainer.config import ConfigError, check_data_paths, dump_yaml, flatten, load_config, to_dict

from tests.testlib import REPO

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path):
    config = load_config(path)
    assert config.model.stacks >= 1


def test_base_file_and_overrides(tmp_path):
    write(tmp_path, "base.yaml", "model:\n  stacks: 4\n  features: 128\noptim:\n  lr: 1.0e-3\n")
    child = write(tmp_path, "child.yaml", "base: base.yaml\nmodel:\n  stacks: 2\n")
    config = load_config(child, ["optim.lr=2e-4", "data.train_shards=/x/y", "model.input_size=[192,256]"])
    assert config.model.stacks == 2          # child over base
    assert config.model.features == 128      # inherited from base
    assert config.optim.lr == pytest.approx(2e-4)  # command line over files; `2e-4` is a YAML string
    assert config.data.train_shards == "/x/y"
    assert config.model.input_size == [192, 256]


def test_unknown_key_names_key_file_and_suggestion(tmp_path):
    path = write(tmp_path, "bad.yaml", "model:\n  stakcs: 2\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert str(path) in message and "'model.stakcs'" in message and "'model.stacks'" in message


def test_key_from_base_file_is_blamed_on_base(tmp_path):
    write(tmp_path, "base.yaml", "optim:\n  lr: -1.0\n")
    child = write(tmp_path, "child.yaml", "base: base.yaml\nmodel:\n  stacks: 2\n")
    with pytest.raises(ConfigError, match=r"base\.yaml: 'optim\.lr' must be positive"):
        load_config(child)


@pytest.mark.parametrize("override, pattern", [
    ("optim.lr=-1", r"'optim.lr' must be positive"),
    ("optim.lr=fast", r"'optim.lr' must be a number"),
    ("data.batch_size=0", r"'data.batch_size' must be at least 1"),
    ("data.batch_size=2.5", r"'data.batch_size' must be an integer"),
    ("model.gradient_checkpointing=maybe", r"must be true or false"),
    ("dist.backend=horovod", r"'dist.backend' must be one of 'ddp', 'deepspeed'"),
    ("model.input_size=[256,200]", r"'model.input_size' must be"),
    ("dist.zero_stage=2", r"needs dist.backend=deepspeed"),
    ("model=3", r"'model' must be a section"),
    ("nonsense", r"not of the form"),
])
def test_invalid_values_name_the_key(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, [override])


def test_python_tags_and_duplicates_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = write(tmp_path, "evil.yaml",
                 f"model: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(evil)
    assert not marker.exists()
    dup = write(tmp_path, "dup.yaml", "model:\n  stacks: 2\n  stacks: 4\n")
    with pytest.raises(ConfigError, match="duplicate key"):
        load_config(dup)


def test_base_cycle_is_an_error(tmp_path):
    write(tmp_path, "a.yaml", "base: b.yaml\n")
    b = write(tmp_path, "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(b)


def test_missing_shard_directory_at_train_time(tmp_path):
    config = load_config(None, [f"data.train_shards={tmp_path / 'nope'}", "eval.every_epochs=0"])
    with pytest.raises(ConfigError, match="data.train_shards.*does not exist"):
        check_data_paths(config, need_val=False)


def test_dump_round_trips(tmp_path):
    config = load_config(REPO / "configs" / "coco_hg8_256_zero2.yaml", ["seed=7"])
    saved = write(tmp_path, "saved.yaml", dump_yaml(config))
    assert to_dict(load_config(saved)) == to_dict(config)
    assert flatten(to_dict(config))["dist.zero_stage"] == 2


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainer", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_cli_print_config_and_typo_exit_2():
    shown = run_cli("train", "--config", "configs/demo_cpu.yaml", "--print-config", "model.stacks=3")
    assert shown.returncode == 0, shown.stderr
    assert "stacks: 3" in shown.stdout
    typo = run_cli("train", "--config", "configs/demo_cpu.yaml", "model.stakcs=2")
    assert typo.returncode == 2
    assert "model.stakcs" in typo.stderr and "model.stacks" in typo.stderr
    assert "Traceback" not in typo.stderr
