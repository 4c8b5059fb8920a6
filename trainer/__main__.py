"""python -m trainer {train, check, eval, predict, show-batch, bench, tracking-sync} — the command line.

User mistakes (config, shards, inputs, paths, permissions) print one clear line and exit 2; no
traceback unless --debug (anywhere on the line) or POSEFORGE_DEBUG=1. Ctrl-C: one line, exit 130.
A training run stopped by a signal saves, names its checkpoint and exits 128 + the signal number.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys

from shards.errors import debug_requested, run_cli
from trainer.config import Config, ConfigError, dump_yaml, load_config


def _user_errors() -> tuple[type[BaseException], ...]:
    from shards.errors import ShardError
    from trainer.errors import CheckpointError, MetricInputError, OutputError, RunDirError
    errors: tuple[type[BaseException], ...] = (ConfigError, ShardError, MetricInputError, CheckpointError,
                                                RunDirError, OutputError)
    # Only modules already imported can have raised their errors: a config typo never waits for torch.
    if "trainer.dist" in sys.modules:
        errors += (sys.modules["trainer.dist"].DistributedError,)
    if "trainer.inference.images" in sys.modules:
        errors += (sys.modules["trainer.inference.images"].ImageInputError,)
    return errors


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config file (may name a `base` file)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="dotted overrides, e.g. model.stacks=2 optim.lr=1e-3")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__.splitlines()[0])
    # The deepspeed launcher (and torch.distributed.launch) pass this; LOCAL_RANK in the
    # environment is what dist.py reads.
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model (plain python: 1 process; torchrun: many)")
    _add_config_args(train)
    train.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    _add_resume_arg(train)
    train.add_argument("--init-from", metavar="CHECKPOINT", help="start from these weights only")

    check = commands.add_parser("check", help="preflight a training launch in seconds (shards, schema, "
                                "output directory, device); exit 2 naming the first problem")
    _add_config_args(check)
    _add_resume_arg(check)
    check.add_argument("--skip-lock", action="store_true",
                       help="do not fail when the run directory is locked (other nodes of the same job)")

    evaluate = commands.add_parser("eval", help="evaluate a checkpoint or a predictions file")
    evaluate.add_argument("--checkpoint", help="checkpoint directory (its saved config is used)")
    evaluate.add_argument("--predictions", help="score this instead: the per-sample records of --out (the "
                          "manifest's protocol is applied) or final COCO keypoint results")
    evaluate.add_argument("--shards", required=True, help="val shard directory (with manifest.json)")
    evaluate.add_argument("--no-flip", action="store_true", help="disable the flip test")
    evaluate.add_argument("--out", help="write per-sample predictions (json) here, and for COCO the "
                          "COCO results next to it (NAME.coco_results.json)")
    evaluate.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    evaluate.add_argument("--allow-incomplete", action="store_true",
                          help="report metrics even when val samples are missing")
    evaluate.add_argument("overrides", nargs="*", metavar="section.key=value")

    show = commands.add_parser("show-batch", help="draw one augmented batch with targets to a PNG")
    _add_config_args(show)
    show.add_argument("--out", required=True, help="PNG path")
    show.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    show.add_argument("--split", choices=["train", "val"], default="train")
    show.add_argument("-n", type=int, default=16, help="number of samples")

    from trainer.inference.cli import add_predict_parser
    from trainer.tracking.sync import add_sync_parser
    add_predict_parser(commands)
    add_sync_parser(commands)
    from trainer.bench.cli import add_bench_parser
    add_bench_parser(commands)
    return parser


def _add_resume_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resume", nargs="?", const="", metavar="CHECKPOINT",
                        help="continue the run in output_dir even though the config changed (the "
                        "changes are applied and logged), from its newest checkpoint or CHECKPOINT")


def main(argv: list[str] | None = None) -> int:
    debug, argv = debug_requested(sys.argv[1:] if argv is None else list(argv))
    args = build_parser().parse_args(argv)
    return run_cli(lambda: _run(args), _user_errors, debug)


def _run(args: argparse.Namespace) -> int:
    if args.command in ("train", "check"):
        if args.resume and "=" in args.resume and not os.path.exists(args.resume):
            # `--resume optim.lr=1e-4`: argparse gave the override to --resume's optional value
            args.overrides, args.resume = [*args.overrides, args.resume], ""
        config = load_config(args.config, args.overrides)
        if args.command == "check":
            return _check(config, args)
        if args.print_config:
            print(dump_yaml(config), end="")
            return 0
        from trainer.train import train
        result = train(config, resume=args.resume, init_from=args.init_from)
        if result.stop_signal is None:
            return 0
        if os.environ.get("RANK", "0") == "0":  # one line per job, not per rank
            print(f"stopped by {result.stop_signal} at step {result.step}; checkpoint {result.checkpoint}; "
                  f"the same command resumes it", file=sys.stderr)
        return 128 + int(getattr(signal, result.stop_signal))
    if args.command == "eval":
        from trainer.evaluation.cli import run_eval
        return run_eval(args)
    if args.command == "predict":
        from trainer.inference.cli import run_predict
        return run_predict(args)
    if args.command == "tracking-sync":
        from trainer.tracking.sync import run_sync
        return run_sync(args)
    if args.command == "bench":
        from trainer.bench.cli import run_bench
        return run_bench(args)
    if args.command == "show-batch":
        config = load_config(args.config, args.overrides)
        from trainer.outputs import check_output_file
        check_output_file(args.out, args.overwrite)
        from trainer.data.show_batch import show_batch
        show_batch(config, args.out, split=args.split, n=args.n)
        print(os.path.abspath(args.out))
        return 0
    raise AssertionError(args.command)


def _check(config: "Config", args: argparse.Namespace) -> int:
    from trainer.preflight import preflight
    report = preflight(config, accept_changes=args.resume is not None, check_lock=not args.skip_lock)
    for line in report.lines:
        print(f"ok  {line}")
    if not config.checkpoint.auto_resume:
        print("note: checkpoint.auto_resume is false: a restarted or requeued run starts again from step 0")
    print("check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
