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
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from cpc_tf import runtime  # noqa: E402
from cpc_tf.benchmarking import jobs, runner  # noqa: E402

FLAGS = flags.FLAGS
_DEFAULTS = runner.BenchmarkOptions()


def define_flags():
    flags.DEFINE_list(
        "configs", list(_DEFAULTS.configs), "Flagfiles in flags/ to run."
    )
    flags.DEFINE_list(
        "precisions",
        list(_DEFAULTS.precisions),
        "|".join(jobs.PRECISIONS) + " (_jit: --jit_compile).",
    )
    flags.DEFINE_string("output", "bench.json", "JSON results file.")
    flags.DEFINE_list(
        "batch_size",
        [],
        "[CONFIG:]N entries; several for one config sweep the batch size. "
        "Default: the flagfile's (v2: 2).",
    )
    flags.DEFINE_list(
        "steps",
        [],
        f"[CONFIG:]N timed steps (default {runner.DEFAULT_STEPS}, v2: 2).",
    )
    flags.DEFINE_list(
        "warmup_steps",
        [],
        f"[CONFIG:]N untimed steps first (default {runner.DEFAULT_WARMUP}, "
        "v2: 2).",
    )
    flags.DEFINE_multi_string(
        "set",
        [],
        "CONFIG:--flag=value, a config flag overridden for CONFIG only "
        "(repeatable), e.g. --set=cifar10:--loss_chunk_size=576.",
    )
    flags.DEFINE_string(
        "stand_in_data",
        _DEFAULTS.stand_in_data,
        "Source read when a config's --train_data cannot be opened.",
    )
    flags.DEFINE_float(
        "pipeline_seconds",
        _DEFAULTS.pipeline_seconds,
        "Time the input pipeline for this long.",
    )
    flags.DEFINE_integer(
        "matmul_size",
        _DEFAULTS.matmul_size,
        "Side of the square matmul of the FLOP/s peak.",
    )
    flags.DEFINE_list(
        "isolate",
        list(_DEFAULTS.isolate),
        "Configs whose precisions run in separate processes (one model at "
        "a time in memory); the others interleave their steps in one.",
    )


def options_from_flags(flag_values=FLAGS):
    """The `BenchmarkOptions` of parsed flags."""
    return runner.BenchmarkOptions(
        configs=tuple(flag_values.configs),
        precisions=tuple(flag_values.precisions),
        batch_size=tuple(flag_values.batch_size),
        steps=tuple(flag_values.steps),
        warmup_steps=tuple(flag_values.warmup_steps),
        overrides=tuple(flag_values.set),
        stand_in_data=flag_values.stand_in_data,
        pipeline_seconds=flag_values.pipeline_seconds,
        matmul_size=flag_values.matmul_size,
        isolate=tuple(flag_values.isolate),
    )


def main(argv):
    del argv
    options = options_from_flags()
    runner.run(
        options,
        FLAGS.output,
        argv=sys.argv,
        echo=lambda line: print(line, flush=True),
    )
    print(f"-> {FLAGS.output}")


if __name__ == "__main__":
    define_flags()
    app.run(runtime.entry_point(main))
