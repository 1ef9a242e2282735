"""Training throughput, FLOPs, MFU and memory of the pretraining configs.

    python -m cpc_tf.benchmark --configs=demo,cifar10,v2 \
        --precisions=float32,mixed_bfloat16,float32_jit --output=bench.json

Run from the repository root (flagfiles name data relative to it). For
every config (a flagfile in `flags/`) and batch size, subprocesses build
the model as `cpc_tf.pretrain` does and run the `Trainer`'s own compiled
step on one fixed in-memory batch of real, augmented patches (so the input
pipeline costs nothing):

- timing: one process holds every precision and interleaves their steps,
  one step each per round, with a float32 and a bfloat16 matmul peak
  sample after every round, so a shared machine's changing load hits all
  of them alike; images/s is the batch over the median step time (warm-up
  steps, i.e. tracing and XLA compilation, excluded);
- FLOPs per image: counted by the TF profiler (`float_operation`) on the
  graph of the loss and its gradient at this batch size; conv and matmul
  ops (forward, input and weight gradients) are the model FLOPs, the
  elementwise ops it also counts are reported apart;
- MFU: achieved FLOP/s over the median matmul peak (best of XLA and oneDNN
  per sample) of the precision's compute dtype (bfloat16 for
  `mixed_bfloat16`);
- peak memory: the peak RSS of a process holding one precision alone, read
  after its warm-up steps (before any matmul sample).

`--isolate` configs (v2: one ResNet-161 at a time fits in memory) time each
precision in its own process instead. One more subprocess per config and
batch size times `pretrain_dataset` alone (decode, resize, crop, patch
grid, augmentation) once its shuffle buffer is full. A config whose
training source cannot be opened (ImageNet for v2) reads
`--stand_in_data`, recorded as `train_data`. The work is done by
`cpc_tf.benchmarking`.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from cpc_tf.benchmarking import command  # noqa: E402
from cpc_tf.protocols import runtime  # noqa: E402

if __name__ == "__main__":
    command.define_flags(flags.FLAGS)
    app.run(
        runtime.entry_point(
            lambda argv: print(f"-> {command.run_from_flags(flags.FLAGS)}")
        )
    )
