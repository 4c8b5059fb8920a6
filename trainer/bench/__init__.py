"""The benchmark suite (python -m trainer bench): figures measured side by side, written as JSON
and rendered to docs/benchmarks.md.

  cli.py             python -m trainer bench
  suite.py           presets and run_suite: which parts run, at which sizes, load average around each
  timing.py          interleaved A/B timing, medians and paired ratios
  steps.py           model shapes, synthetic batches, the bare and the full training step
  compute.py         convolution peak, step efficiency, overhead, profile, checkpointing memory/time
  data.py            the data-pipeline figures (raw loader vs poseforge vs decode-only)
  scaling.py         torchrun 1 vs 2 ranks, DDP and DeepSpeed
  report.py          JSON -> markdown with verdicts computed from the figures
  memory_worker.py, scaling_worker.py   the processes compute.py and scaling.py start
  shard_throughput.py  sharding speed and bytes per sample (python -m trainer.bench.shard_throughput)
"""
