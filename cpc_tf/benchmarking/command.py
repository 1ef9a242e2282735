"""The benchmark's command line: its flags and `run_from_flags`
(`python -m cpc_tf.benchmark`; see `cpc_tf.benchmark` for what it
measures)."""

import sys

from absl import flags

from cpc_tf.benchmarking import jobs
from cpc_tf.benchmarking.runner import (
    DEFAULT_STEPS,
    DEFAULT_WARMUP,
    BenchmarkOptions,
    run,
)

_DEFAULTS = BenchmarkOptions()


def define_flags(flag_values):
    """The benchmark's flags, on `flag_values`."""
    flags.DEFINE_list(
        "configs",
        list(_DEFAULTS.configs),
        "Flagfiles in flags/ to run.",
        flag_values=flag_values,
    )
    flags.DEFINE_list(
        "precisions",
        list(_DEFAULTS.precisions),
        "|".join(jobs.PRECISIONS) + " (_jit: --jit_compile).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "output", "bench.json", "JSON results file.", flag_values=flag_values
    )
    flags.DEFINE_list(
        "batch_size",
        [],
        "[CONFIG:]N entries; several for one config sweep the batch size. "
        "Default: the flagfile's (v2: 2).",
        flag_values=flag_values,
    )
    flags.DEFINE_list(
        "steps",
        [],
        f"[CONFIG:]N timed steps (default {DEFAULT_STEPS}, v2: 2).",
        flag_values=flag_values,
    )
    flags.DEFINE_list(
        "warmup_steps",
        [],
        f"[CONFIG:]N untimed steps first (default {DEFAULT_WARMUP}, v2: 2).",
        flag_values=flag_values,
    )
    flags.DEFINE_multi_string(
        "set",
        [],
        "CONFIG:--flag=value, a config flag overridden for CONFIG only "
        "(repeatable), e.g. --set=cifar10:--loss_chunk_size=576.",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "stand_in_data",
        _DEFAULTS.stand_in_data,
        "Source read when a config's --train_data cannot be opened.",
        flag_values=flag_values,
    )
    flags.DEFINE_float(
        "pipeline_seconds",
        _DEFAULTS.pipeline_seconds,
        "Time the input pipeline for this long.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "matmul_size",
        _DEFAULTS.matmul_size,
        "Side of the square matmul of the FLOP/s peak.",
        flag_values=flag_values,
    )
    flags.DEFINE_list(
        "isolate",
        list(_DEFAULTS.isolate),
        "Configs whose precisions run in separate processes (one model at "
        "a time in memory); the others interleave their steps in one.",
        flag_values=flag_values,
    )


def options_from_flags(flag_values):
    """The `BenchmarkOptions` of parsed flags."""
    return BenchmarkOptions(
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


def run_from_flags(flag_values):
    """Runs the benchmark of parsed flags; returns the output path."""
    run(
        options_from_flags(flag_values),
        flag_values.output,
        argv=sys.argv,
        echo=lambda line: print(line, flush=True),
    )
    return flag_values.output
