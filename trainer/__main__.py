"""python -m trainer {train, eval, predict, show-batch, bench, tracking-sync} — the command line.

User mistakes (config, shards, inputs) print one clear line and exit 2; no traceback.
"""
from __future__ import annotations

import argparse
import os
import sys

from trainer.config import ConfigError, dump_yaml, load_config

EXIT_USAGE = 2


def _user_errors() -> tuple[type[BaseException], ...]:
    from shards.errors import ShardError
    from trainer.dist import DistributedError
    from trainer.errors import CheckpointError, MetricInputError
    from trainer.inference.images import ImageInputError
    return (ConfigError, ShardError, MetricInputError, CheckpointError, DistributedError, ImageInputError)


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
    train.add_argument("--resume", metavar="CHECKPOINT", help="resume from this checkpoint directory")
    train.add_argument("--init-from", metavar="CHECKPOINT", help="start from these weights only")

    evaluate = commands.add_parser("eval", help="evaluate a checkpoint or a predictions file")
    evaluate.add_argument("--checkpoint", help="checkpoint directory (its saved config is used)")
    evaluate.add_argument("--predictions", help="score this instead: the per-sample records of --out (the "
                          "manifest's protocol is applied) or final COCO keypoint results")
    evaluate.add_argument("--shards", required=True, help="val shard directory (with manifest.json)")
    evaluate.add_argument("--no-flip", action="store_true", help="disable the flip test")
    evaluate.add_argument("--out", help="write per-sample predictions (json) here, and for COCO the "
                          "COCO results next to it (NAME.coco_results.json)")
    evaluate.add_argument("--allow-incomplete", action="store_true",
                          help="report metrics even when val samples are missing")
    evaluate.add_argument("overrides", nargs="*", metavar="section.key=value")

    show = commands.add_parser("show-batch", help="draw one augmented batch with targets to a PNG")
    _add_config_args(show)
    show.add_argument("--out", required=True, help="PNG path")
    show.add_argument("--split", choices=["train", "val"], default="train")
    show.add_argument("-n", type=int, default=16, help="number of samples")

    from trainer.inference.cli import add_predict_parser
    from trainer.tracking.sync import add_sync_parser
    add_predict_parser(commands)
    add_sync_parser(commands)
    from trainer.bench.cli import add_bench_parser
    add_bench_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except ConfigError as error:  # before _user_errors(): a config typo should not wait for torch
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except _user_errors() as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE


def _run(args: argparse.Namespace) -> int:
    if args.command == "train":
        config = load_config(args.config, args.overrides)
        if args.print_config:
            print(dump_yaml(config), end="")
            return 0
        from trainer.train import train
        train(config, resume=args.resume, init_from=args.init_from)
        return 0
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
        from trainer.data.show_batch import show_batch
        show_batch(config, args.out, split=args.split, n=args.n)
        print(os.path.abspath(args.out))
        return 0
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
