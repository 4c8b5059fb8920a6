"""One tiny model trained for real and registered in a real `mlflow server`, once per session.

The clean-environment, serving, bench and UI tests all use it (`registered_model` fixture):
a single-process training on the demo shards with eval every epoch, tracked to a loopback
server, its best checkpoint registered as NAME with the `champion` alias.
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
from mlflow.tracking import MlflowClient

from tests.mlflow_server import MlflowServer
from tests.testlib import REPO, launch_env, torchrun_command, train_args

NAME, ALIAS, RUN_NAME, EXPERIMENT = "pose-e2e", "champion", "tiny-hg-e2e", "poseforge-e2e"


@dataclass
class RegisteredModel:
    server: MlflowServer
    name: str
    alias: str
    run_id: str
    experiment_id: str
    checkpoint: str           # the checkpoint the champion was made from
    val_images: list[Path]    # real JPEGs (the synthetic COCO val photos)

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}"


_made: dict[Path, RegisteredModel] = {}


@pytest.fixture(scope="session")
def registered_model(demo_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegisteredModel]:
    """Each module that imports the fixture gets its own copy of it: train once anyway."""
    session_dir = tmp_path_factory.getbasetemp()
    if session_dir in _made:
        yield _made[session_dir]
        return
    server = MlflowServer(tmp_path_factory.mktemp("registry_server")).start()
    try:
        out = tmp_path_factory.mktemp("registered_run")
        command = torchrun_command(1, "-m", "trainer", "train", *train_args(
            demo_shards, out, "schedule.epochs=2", "eval.every_epochs=1", "tracking.enabled=true",
            f"tracking.uri={server.uri}", f"tracking.experiment={EXPERIMENT}", f"tracking.run_name={RUN_NAME}",
            f"tracking.registered_model={NAME}", f"tracking.alias={ALIAS}", "log_every_steps=2",
            "tracking.register_min_metric=-1"))  # a tiny model's AP may be 0: register it anyway
        done = subprocess.run(command, cwd=REPO, env=launch_env(POSEFORGE_SYSTEM_METRICS="0"),
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        client = MlflowClient(server.uri)
        champion = client.get_model_version_by_alias(NAME, ALIAS)
        experiment = client.get_experiment_by_name(EXPERIMENT)
        val_images = sorted((demo_shards.parent / "coco" / "images" / "val").glob("*.jpg"))
        _made[session_dir] = RegisteredModel(server, NAME, ALIAS, champion.run_id, experiment.experiment_id,
                                             champion.tags["checkpoint"], val_images)
        yield _made[session_dir]
    finally:
        server.stop()
