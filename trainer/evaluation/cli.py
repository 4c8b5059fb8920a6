"""`python -m trainer eval`: score a checkpoint on a val shard set, or score a predictions file.

Runs as one process or under torchrun (each rank evaluates a disjoint part of the shards).
"""
from __future__ import annotations

import argparse
import sys

import torch

from shards.schema import load_schema
from trainer import dist
from trainer.checkpoint import load_weights_only, read_checkpoint_config
from trainer.config import ConfigError, config_from_dict, parse_override, set_dotted
from trainer.data import eval_manifest
from trainer.evaluation.coco_metric import (coco_keypoint_eval, format_coco_table, load_coco_results,
                                            load_predictions_list)
from trainer.evaluation.instances import box_source, label_metrics
from trainer.evaluation.runner import (IncompleteEvaluation, check_records, coco_results_path, describe_protocol,
                                       gather_predictions, predict_samples, print_warnings, score,
                                       write_predictions)
from trainer.outputs import check_output_file
from trainer.evaluation.pckh import format_pckh_table
from trainer.model import build_model
from trainer.model.codec import make_codec


def run_eval(args: argparse.Namespace) -> int:
    if bool(args.checkpoint) == bool(args.predictions):
        raise ConfigError("eval needs exactly one of --checkpoint and --predictions")
    manifest = eval_manifest(args.shards)
    if args.out:  # before the evaluation, not after it: refused or unwritable outputs cost nothing
        check_output_file(args.out, args.overwrite)
        if manifest["dataset"] != "mpii":
            check_output_file(coco_results_path(args.out), args.overwrite)
    if args.predictions:
        return _score_predictions_file(args.predictions, manifest, args.allow_incomplete)
    return _evaluate_checkpoint(args, manifest)


def _score_predictions_file(path: str, manifest: dict, allow_incomplete: bool) -> int:
    """Per-sample records (`eval --out`) get the manifest's protocol (rescoring, OKS-NMS, head
    sizes); COCO keypoint results are taken as final (already scored and suppressed)."""
    schema = load_schema(manifest["schema"])
    data = load_predictions_list(path)
    print_warnings(manifest)
    if data and isinstance(data[0], dict) and "key" in data[0]:
        try:
            metrics = score(check_records(data, path), manifest, schema, allow_incomplete)
        except IncompleteEvaluation as error:
            print(f"error: {error}", file=sys.stderr)
            return 3
    elif manifest["dataset"] != "coco":
        raise ConfigError(f"--predictions {path}: COCO keypoint results, but {manifest['dataset']} shards given; "
                          "pass the per-sample records of `eval --out`")
    else:
        metrics = coco_keypoint_eval(load_coco_results(path, data), manifest["ground_truth"], sigmas=schema.sigmas)
        metrics = {**metrics, **label_metrics(metrics, box_source(manifest))}
    _print_table(metrics, manifest, path)
    return 0


def _print_table(metrics: dict, manifest: dict, source: str) -> None:
    if manifest["dataset"] == "mpii":
        print(f"{source}: {describe_protocol(manifest)}\n{format_pckh_table(metrics)}")
    else:
        print(format_coco_table(metrics, title=f"{source}: {describe_protocol(manifest)}"))


def _checkpoint_config(checkpoint: str, overrides: list[str]):
    data = read_checkpoint_config(checkpoint)
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(data, key, value)
    return config_from_dict(data, origin=f"{checkpoint} (saved config) + command line")


def _evaluate_checkpoint(args: argparse.Namespace, manifest: dict) -> int:
    config = _checkpoint_config(args.checkpoint, args.overrides)
    if args.no_flip:
        config.eval.flip_test = False
    if args.allow_incomplete:
        config.eval.allow_incomplete = True
    world = dist.world_from_env()
    device = dist.init_distributed(world, config.dist.timeout_s)
    try:
        schema = load_schema(config.data.schema)
        model = build_model(config, schema.num_keypoints)
        model.load_state_dict(load_weights_only(args.checkpoint))
        model = model.to(device).eval()
        if config.model.channels_last:
            model = model.to(memory_format=torch.channels_last)
        records = predict_samples(model, config, world, device, make_codec(config), schema,
                                  args.shards, flip=config.eval.flip_test)
        everything = gather_predictions(records)
        if not world.is_main:
            return 0
        if args.out:
            write_predictions(everything, manifest, schema, args.out)
        print_warnings(manifest, config)
        try:
            metrics = score(everything, manifest, schema, config.eval.allow_incomplete)
        except IncompleteEvaluation as error:
            print(f"error: {error}", file=sys.stderr)
            return 3
        _print_table(metrics, manifest, f"{args.checkpoint} on {args.shards}")
        return 0
    finally:
        dist.teardown()
