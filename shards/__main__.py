"""python -m shards {coco, mpii, synth, manifest, verify, inspect, head-ratio}: see docs/shards.md."""
from __future__ import annotations

import argparse
import os
import sys
import time

from .errors import ShardError, debug_requested, run_cli


def _add_write_options(p: argparse.ArgumentParser) -> None:
    from .crop import CropSettings

    d = CropSettings()
    p.add_argument("--annotations", required=True, help="annotation file")
    p.add_argument("--images", required=True, help="folder of the images named in the annotations")
    p.add_argument("--out", required=True, help="shard directory to write")
    p.add_argument("--split", default="train")
    p.add_argument("--schema", default=None, help="coco17, mpii16 or a YAML file (default: the data set's)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--samples-per-shard", type=int, default=1000)
    p.add_argument("--max-side", type=int, default=d.max_side, help="longest side of a stored crop (px)")
    p.add_argument("--context", type=float, default=d.context,
                   help="crop side / longest side of the person box")
    p.add_argument("--jpeg-quality", type=int, default=d.jpeg_quality)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a shard set of other sources or settings in --out")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m shards", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    coco = sub.add_parser("coco", help="COCO person_keypoints json + images -> shards")
    _add_write_options(coco)
    coco.add_argument("--detections", help="COCO detection-results json: one record per detector box")
    coco.add_argument("--score-threshold", type=float, default=0.0,
                      help="keep detector boxes scoring at least this")
    mpii = sub.add_parser("mpii", help="MPII json convention or release .mat + images -> shards")
    _add_write_options(mpii)
    mpii.add_argument("--head-boxes", help="gt_valid.mat (HRNet) / mpii_gt_val.mat (mmpose): PCKh head "
                                           "boxes for a json-convention val split, column i = entry i")
    mpii.add_argument("--estimate-head-size", action="store_true",
                      help="without head boxes, estimate head sizes from the neck-top distance "
                           "(marked as estimated; not comparable with published PCKh)")
    mpii.add_argument("--val-people", help="with the release .mat: a json-convention file (valid.json) "
                                           "whose people form the val split and are left out of train")
    ratio = sub.add_parser("head-ratio", help="measure head size / neck-top distance on real head boxes "
                                              "(the --estimate-head-size constant)")
    ratio.add_argument("--annotations", required=True, help="MPII json convention, e.g. valid.json")
    ratio.add_argument("--head-boxes", required=True, help="the gt_valid.mat / mpii_gt_val.mat paired with it")
    synth = sub.add_parser("synth", help="write a synthetic data set in the real COCO or MPII format")
    synth.add_argument("--format", choices=("coco", "mpii"), required=True)
    synth.add_argument("--out", required=True)
    synth.add_argument("--images", type=int, default=100, help="training images")
    synth.add_argument("--val-images", type=int, default=None, help="validation images (default images/4)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--difficulty", default="medium", help="easy, medium, hard or a number in [0, 1]")
    synth.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    manifest = sub.add_parser("manifest", help="count and checksum tars written elsewhere (e.g. by "
                              "webdataset.ShardWriter) and write their manifest.json")
    manifest.add_argument("dir")
    manifest.add_argument("--schema", required=True, help="coco17, mpii16 or a YAML file")
    manifest.add_argument("--pattern", default="*.tar", help="which files of DIR are shards (a glob)")
    manifest.add_argument("--dataset", default="custom")
    manifest.add_argument("--split", default="train")
    verify = sub.add_parser("verify", help="decode every sample, check it against the manifest")
    verify.add_argument("dir")
    inspect = sub.add_parser("inspect", help="contact sheet PNG of samples with skeletons")
    inspect.add_argument("dir")
    inspect.add_argument("--out", required=True)
    inspect.add_argument("--n", type=int, default=16)
    inspect.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return parser


def _write(args: argparse.Namespace) -> int:
    from .crop import CropSettings
    from .schema import load_schema
    from .write import write_shards

    schema = load_schema(args.schema or ("coco17" if args.command == "coco" else "mpii16"))
    if args.command == "coco":
        from .coco import load_coco
        source = load_coco(args.annotations, args.images, schema, args.detections, args.score_threshold)
    else:
        from .mpii import load_mpii
        source = load_mpii(args.annotations, args.images, schema, args.split, args.head_boxes,
                           args.estimate_head_size, args.val_people)
        if source.manifest_fields["head_sizes"]["estimated"]:
            from .mpii_heads import ESTIMATE_WARNING
            print(f"warning: {ESTIMATE_WARNING}", file=sys.stderr)
    if not 1 <= args.jpeg_quality <= 100 or args.max_side < 8 or args.context < 1.0:
        raise ShardError("--jpeg-quality must be 1..100, --max-side at least 8, --context at least 1")
    settings = CropSettings(context=args.context, max_side=args.max_side, jpeg_quality=args.jpeg_quality)
    _check_images_found(source.records, args.images)
    from .out_dir import claim_out_dir, run_identity
    claim_out_dir(args.out, run_identity(dataset=args.command, split=args.split, schema=schema.name,
                                         samples_per_shard=args.samples_per_shard, crop=settings.to_dict(),
                                         sources=source.sources), args.overwrite)
    started = time.perf_counter()
    manifest = write_shards(
        source.records, args.out, dataset=args.command, split=args.split, schema=schema,
        settings=settings, samples_per_shard=args.samples_per_shard, workers=args.workers,
        annotation_skips=dict(source.skipped), ground_truth=source.ground_truth,
        sources=source.sources, progress=not args.no_progress, manifest_fields=source.manifest_fields)
    seconds = time.perf_counter() - started
    skipped = ", ".join(f"{k} {v}" for k, v in manifest["skipped"].items()) or "none"
    if manifest["num_samples"] == 0:
        raise ShardError(f"{args.out}: no sample was written (skipped: {skipped}); check --annotations "
                         f"and --images {args.images}")
    total_bytes = sum(s["bytes"] for s in manifest["shards"])
    print(f"{manifest['num_samples']} samples in {manifest['num_shards']} shards "
          f"({total_bytes / 1e6:.1f} MB) in {args.out}, {seconds:.1f} s; skipped: {skipped}")
    return 0


def _check_images_found(records: list, images_dir: str, probe: int = 50) -> None:
    """A wrong --images folder is an error now, not a set of 0 samples after the whole pass."""
    if not os.path.isdir(images_dir):
        raise ShardError(f"--images {images_dir}: no such directory")
    paths = list(dict.fromkeys(r.image_path for r in records))[:probe]
    if paths and not any(os.path.isfile(p) for p in paths):
        raise ShardError(f"--images {images_dir}: none of the first {len(paths)} images named in the "
                         f"annotations is there (e.g. {paths[0]})")


def _synth(args: argparse.Namespace) -> int:
    from .synth import synth_coco, synth_mpii
    from .synth_figure import parse_difficulty

    try:
        difficulty = parse_difficulty(args.difficulty)
    except ValueError as e:
        raise ShardError(f"--difficulty: {e}") from None
    if args.images < 0 or (args.val_images or 0) < 0:
        raise ShardError("--images and --val-images must not be negative")
    val = args.val_images if args.val_images is not None else max(1, args.images // 4)
    make = synth_coco if args.format == "coco" else synth_mpii
    started = time.perf_counter()
    counts = make(args.out, args.images, val, args.seed, difficulty, args.workers)
    print(f"synthetic {args.format}: {args.images} train + {val} val images, "
          f"{counts['train_people']} + {counts['val_people']} labelled people in {args.out}, "
          f"{time.perf_counter() - started:.1f} s")
    return 0


def _catalog(args: argparse.Namespace) -> int:
    from .catalog import catalog
    from .schema import load_schema

    manifest = catalog(args.dir, load_schema(args.schema), args.pattern, args.dataset, args.split)
    print(f"{args.dir}: {manifest['num_samples']} samples in {manifest['num_shards']} shards; "
          f"manifest.json written")
    return 0


def main(argv: list[str] | None = None) -> int:
    debug, argv = debug_requested(sys.argv[1:] if argv is None else list(argv))
    args = _parser().parse_args(argv)
    return run_cli(lambda: _run(args), lambda: (ShardError,), debug)


def _run(args: argparse.Namespace) -> int:
    if args.command in ("coco", "mpii"):
        return _write(args)
    if args.command == "synth":
        return _synth(args)
    if args.command == "manifest":
        return _catalog(args)
    if args.command == "head-ratio":
        from .mpii_ratio import print_head_ratio
        return print_head_ratio(args.annotations, args.head_boxes)
    if args.command == "verify":
        from .verify import verify
        problems = verify(args.dir)
        for p in problems:
            print(p, file=sys.stderr)
        print(f"{args.dir}: {'OK' if not problems else f'{len(problems)} problems'}")
        return 1 if problems else 0
    if os.path.exists(args.out) and not args.overwrite:
        raise ShardError(f"--out {args.out}: exists; --overwrite replaces it")
    from .inspect import contact_sheet
    drawn = contact_sheet(args.dir, args.out, args.n)
    print(f"{drawn} samples drawn into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
