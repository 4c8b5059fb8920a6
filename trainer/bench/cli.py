"""python -m trainer bench <data|train|compile|checkpointing|scaling|inference|evaluation|all> --json out.json [--quick]

The benchmark suite: each part writes its figures into one JSON document (medians of several
runs after a warm-up, ratios measured side by side in interleaved rounds). `--markdown PATH`
also renders the table (report.py) that docs/benchmarks.md holds. The parts are listed in suite.py.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from trainer.bench.steps import THREADS_ENV
from trainer.bench.suite import PARTS, PRESETS, run_suite


def add_bench_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("bench", help="run the benchmark suite and write its figures as JSON",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=[*PARTS, "all"], help="which benchmarks to run")
    parser.add_argument("--json", required=True, metavar="PATH", help="write the figures here")
    parser.add_argument("--quick", action="store_true", help="small sizes and repeats (~2-3 minutes for all)")
    parser.add_argument("--preset", choices=sorted(PRESETS), help=argparse.SUPPRESS)  # 'smoke' for tests
    parser.add_argument("--markdown", metavar="PATH", help="also render the table (e.g. docs/benchmarks.md)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="intra-op threads per benchmark process (default: one per core)")
    parser.add_argument("--readme", metavar="PATH", help="also rewrite the generated benchmark block of README.md")
    return parser


def run_bench(args: argparse.Namespace) -> int:
    preset = args.preset or ("quick" if args.quick else "full")
    if args.threads:
        os.environ[THREADS_ENV] = str(args.threads)  # memory workers inherit it
    parts = list(PARTS) if args.part == "all" else [args.part]
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = run_suite(parts, preset, save=lambda r: out.write_text(json.dumps(r, indent=1) + "\n"))
    result["command_parts"] = [args.part]
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(out.resolve())
    if args.markdown:
        from trainer.bench.report import render_markdown
        Path(args.markdown).write_text(render_markdown(result))
        print(Path(args.markdown).resolve())
    if args.readme:
        from trainer.bench.report import rewrite_readme
        rewrite_readme(args.readme, result, args.json)
    return 0
