"""Run ownership in isolation: which keys change a run's fingerprint, the diff that refuses another
config, and the lock (held by another process, released when that process dies)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.testlib import launch_env
from trainer.config import Config, to_dict
from trainer.errors import RunDirError
from trainer.run_dir import RunLock, check_ownership, config_changes, fingerprint, lock_holder, record_run


def _config(**changes: object) -> dict:
    config = to_dict(Config())
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        config[section][key] = value
    return config


def test_fingerprint_ignores_where_and_how_fast_but_not_what():
    base = fingerprint(_config())
    assert fingerprint({**_config(data__workers=16, tracking__experiment="x"), "output_dir": "elsewhere"}) == base
    assert fingerprint(_config(checkpoint__every_steps=7)) == base
    assert fingerprint(_config(optim__lr=1e-4)) != base
    assert [str(c) for c in config_changes(_config(), _config(optim__lr=1e-4, data__workers=1))] == \
        ["optim.lr 0.0005 -> 0.0001"]


def test_ownership_refuses_changes_unless_accepted_and_never_a_new_shape(tmp_path):
    assert check_ownership(str(tmp_path), _config(optim__lr=1.0), accept_changes=False) == []  # nothing recorded
    record_run(str(tmp_path), _config(), [], step=0)
    assert check_ownership(str(tmp_path), _config(data__workers=1), accept_changes=False) == []
    with pytest.raises(RunDirError, match=r"optim.lr 0.0005 -> 0.0001.*--resume"):
        check_ownership(str(tmp_path), _config(optim__lr=1e-4), accept_changes=False)
    assert [c.key for c in check_ownership(str(tmp_path), _config(optim__lr=1e-4), accept_changes=True)] == ["optim.lr"]
    with pytest.raises(RunDirError, match="another model"):
        check_ownership(str(tmp_path), _config(model__stacks=2), accept_changes=True)


def test_lock_names_its_holder_and_dies_with_it(tmp_path):
    assert lock_holder(str(tmp_path)) is None and not (tmp_path / "train.lock").exists()  # a probe creates nothing
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from trainer.run_dir import RunLock; "
                               "RunLock(sys.argv[1]).acquire(); print('ok', flush=True); time.sleep(60)",
                               str(tmp_path)], env=launch_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ok"
        assert f"pid {holder.pid}" in lock_holder(str(tmp_path))
        with pytest.raises(RunDirError, match=f"in use by another training job \\(pid {holder.pid}"):
            RunLock(str(tmp_path)).acquire()
    finally:
        holder.kill()
        holder.wait()
    assert lock_holder(str(tmp_path)) is None
    lock = RunLock(str(tmp_path))
    lock.acquire()
    assert lock_holder(str(tmp_path)) is None  # this process's own lock: the probe must not drop it
    lock.release()
