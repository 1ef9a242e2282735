"""Training throughput, FLOPs, MFU and memory (`python -m cpc_tf.benchmark`).

- `flops`: model FLOPs of a training step (TF profiler) and the matmul
  peak they are measured against.
- `jobs`: what one measuring subprocess does (a `Trainer` step timed per
  precision, or the input pipeline alone).
- `runner`: the plan of configs and batch sizes, one subprocess per job,
  the table and the JSON results.
"""
