"""The time-to-accuracy report over finished demo directories (hand-made records, hand-computed figures)."""
from __future__ import annotations

import json

import pytest

from trainer.bench.time_to_accuracy import main, read_chain, summarise


def _demo_dir(root, seed, started_at, seconds, evals, eval_seconds=(), epoch_seconds=()):
    """A demo/ as launch/demo.sh leaves it: chain.json, run/metrics.jsonl, run/run.json."""
    run = root / "run"
    run.mkdir(parents=True)
    (root / "chain.json").write_text(json.dumps({"started_at": started_at, "seconds": seconds}))
    (run / "run.json").write_text(json.dumps({"config": {"seed": seed}}))
    lines = [json.dumps({"step": 10, "time": started_at + 50.0, "train/loss": 0.01})]
    lines += [json.dumps({"step": step, "time": started_at + at, "eval/AP": ap, "eval/AP50": 0.9})
              for step, at, ap in evals]
    lines += [json.dumps({"step": 99, "time": started_at + 1.0, "time/eval_seconds": s}) for s in eval_seconds]
    lines += [json.dumps({"step": 99, "time": started_at + 1.0, "time/epoch_seconds": s}) for s in epoch_seconds]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_points_are_seconds_since_the_chain_started(tmp_path):
    directory = _demo_dir(tmp_path / "d0", 0, 1000.0, 590, [(100, 200.0, 0.41), (200, 420.5, 0.63)],
                          eval_seconds=[9.0, 11.0, 13.0], epoch_seconds=[40.0, 50.0])
    chain = read_chain(str(directory))
    assert chain["seed"] == 0 and chain["final_AP"] == 0.63 and chain["seconds"] == 590
    assert [(p["seconds"], p["step"], p["AP"]) for p in chain["evaluations"]] == [(200.0, 100, 0.41), (420.5, 200, 0.63)]
    # median eval 11 s over median epoch 45 s
    assert chain["eval_share_of_epoch"] == pytest.approx(11.0 / 45.0)


def test_verdict_needs_both_the_ap_and_the_time(tmp_path):
    fast_good = read_chain(str(_demo_dir(tmp_path / "a", 1, 0.0, 600, [(1, 500.0, 0.60)])))
    slow_good = read_chain(str(_demo_dir(tmp_path / "b", 2, 0.0, 601, [(1, 500.0, 0.70)])))
    fast_poor = read_chain(str(_demo_dir(tmp_path / "c", 3, 0.0, 400, [(1, 300.0, 0.599)])))
    assert summarise([fast_good])["verdict"] == "met"
    assert summarise([slow_good, fast_poor])["verdict"] == "missed"
    mixed = summarise([fast_good, slow_good, fast_poor])
    assert mixed["verdict"] == "met in some runs" and mixed["runs_meeting_target"] == 1
    assert mixed["final_AP"] == {"min": 0.599, "median": 0.60, "max": 0.70}
    assert mixed["seconds"]["median"] == 600


def test_command_writes_json_and_plot_and_refuses_a_non_demo_dir(tmp_path, capsys):
    directory = _demo_dir(tmp_path / "d", 7, 50.0, 480, [(5, 250.0, 0.5), (9, 470.0, 0.62)])
    out_json, out_png = tmp_path / "t.json", tmp_path / "t.png"
    assert main([str(directory), "--json", str(out_json), "--png", str(out_png)]) == 0
    assert json.loads(out_json.read_text())["summary"]["verdict"] == "met"
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "seed 7: 250 s: 0.500, 470 s: 0.620; whole chain 480 s" in capsys.readouterr().out
    assert main([str(directory), "--json", str(tmp_path / "missing" / "t.json")]) == 2
    assert "cannot write" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "chain.json" in error
    unfinished = _demo_dir(tmp_path / "u", 0, 0.0, 10, [])
    assert main([str(unfinished)]) == 2 and "no eval/AP record" in capsys.readouterr().err


@pytest.mark.parametrize("bad_line", ['"just a string"', "[1, 2]", '{"step": 3}', '{"step": 1, "time": "noon"}',
                                      '{"step": 1, "time": 5.0, "eval/AP": "high"}', "{not json"])
def test_a_damaged_metrics_line_is_named_not_a_traceback(tmp_path, capsys, bad_line):
    directory = _demo_dir(tmp_path / "d", 0, 0.0, 100, [(1, 50.0, 0.5)])
    with open(directory / "run" / "metrics.jsonl", "a") as handle:
        handle.write(bad_line + "\n")
    assert main([str(directory)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "metrics.jsonl:3:" in error  # after the train and the eval record, error


def test_a_chain_file_without_numbers_is_refused(tmp_path, capsys):
    directory = _demo_dir(tmp_path / "d", 0, 0.0, 100, [(1, 50.0, 0.5)])
    (directory / "chain.json").write_text('{"started_at": "today", "seconds": 100}')
    assert main([str(directory)]) == 2 and "chain.json: needs numbers" in capsys.readouterr().err
