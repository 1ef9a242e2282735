"""The benchmark's plan, its subprocesses, its table and its JSON.

Each config (a flagfile in `flags/`) and batch size gets one "pipeline"
job and "train" jobs (`jobs`), each in a fresh Python process: one
process holds every precision and interleaves their steps, or, for an
isolated config, one process per precision; then one short process per
precision reads its peak memory alone.
"""

import dataclasses
import json
import os
import subprocess
import sys
import tempfile

import keras
import tensorflow as tf

from cpc_tf.benchmarking import jobs
from cpc_tf.config import FlagError
from cpc_tf.rundir import artifacts
from cpc_tf.training import machine as host

ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
# Per-config defaults that differ from the flagfile (v2: a tiny batch).
CONFIG_DEFAULTS = {"v2": dict(batch_size=2, steps=2, warmup_steps=2)}
DEFAULT_STEPS = 10
DEFAULT_WARMUP = 2
REQUIRED_KEYS = (
    "config",
    "precision",
    "mfu",
    "images_per_s",
    "patches_per_s",
    "flops_per_image",
    "achieved_flops",
    "peak_flops",
    "pipeline_images_per_s",
    "peak_memory_mb",
    "batch_size",
    "steps",
)
TABLE_HEADER = (
    f"{'config':8} {'precision':19} {'batch':>5} {'images/s':>9} "
    f"{'patches/s':>10} {'GFLOP/img':>9} {'GFLOP/s':>9} {'peak':>9} "
    f"{'MFU':>6} {'pipe im/s':>9} {'pipe/t':>7} {'peak MB':>8}"
)


@dataclasses.dataclass(frozen=True)
class BenchmarkOptions:
    """What to measure; the per-config lists take `[CONFIG:]N` entries."""

    configs: tuple = ("demo", "cifar10", "v2")
    precisions: tuple = ("float32", "mixed_bfloat16", "float32_jit")
    batch_size: tuple = ()
    steps: tuple = ()
    warmup_steps: tuple = ()
    overrides: tuple = ()
    stand_in_data: str = "tfrecord:../shared/data/cifar10/train-*.tfrecord"
    pipeline_seconds: float = 10.0
    matmul_size: int = 4096
    isolate: tuple = ("v2",)


def _per_config(entries, flag):
    """`{config or None: [int, ...]}` from `[CONFIG:]N` flag entries."""
    values = {}
    for entry in entries:
        name, _, value = entry.rpartition(":")
        try:
            values.setdefault(name or None, []).append(int(value))
        except ValueError:
            raise FlagError(
                f"--{flag}: expected [CONFIG:]N, got {entry!r}."
            ) from None
    return values


def _setting(values, name, key, fallback):
    chosen = values.get(name) or values.get(None)
    if chosen:
        return chosen
    return [CONFIG_DEFAULTS.get(name, {}).get(key, fallback)]


def config_args(name, overrides=()):
    """The flags of config `name`: its flagfile, then the `overrides`
    (`CONFIG:--flag=value` entries) aimed at it."""
    flagfile = os.path.join(ROOT, "flags", f"{name}.cfg")
    if not os.path.exists(flagfile):
        raise FlagError(f"--configs: no flagfile {flagfile}.")
    chosen = []
    for entry in overrides:
        target, _, flag = entry.partition(":")
        if not flag.startswith("--"):
            raise FlagError(
                f"--set: expected CONFIG:--flag=value, got {entry!r}."
            )
        if target == name:
            chosen.append(flag)
    return [f"--flagfile={flagfile}", *chosen, "--strategy=default"]


def plan(options):
    """(config, batch size, config args, steps, warm-up steps) to run;
    every setting is checked before the first yields."""
    batch_sizes = _per_config(options.batch_size, "batch_size")
    steps = _per_config(options.steps, "steps")
    warmups = _per_config(options.warmup_steps, "warmup_steps")
    for precision in options.precisions:
        jobs.split_precision(precision)
    planned = []
    for name in options.configs:
        args = config_args(name, options.overrides)
        default_batch = jobs.parse_config(args).run.batch_size
        step_count = _setting(steps, name, "steps", DEFAULT_STEPS)[-1]
        warmup = _setting(warmups, name, "warmup_steps", DEFAULT_WARMUP)[-1]
        if step_count < 1 or warmup < 1:
            raise FlagError(
                "--steps and --warmup_steps: need at least 1 of each (the "
                "peak memory is read after the warm-up steps)."
            )
        for batch in _setting(batch_sizes, name, "batch_size", default_batch):
            planned.append((name, batch, args, step_count, warmup))
    return planned


def _spawn(job):
    """Runs `job` in a fresh Python process; returns its record."""
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "result.json")
        process = subprocess.run(
            [
                sys.executable,
                "-m",
                "cpc_tf.benchmarking.jobs",
                json.dumps(dict(job, result=path)),
            ],
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        if process.returncode:
            return dict(error=process.stdout[-2000:])
        return artifacts.read_json(path)


def machine():
    """The CPU model, core count, AMX and library versions."""
    return dict(
        cpu=host.cpu_model(),
        cores=os.cpu_count(),
        amx_bf16=host.has_amx(),
        tensorflow=tf.__version__,
        keras=keras.__version__,
    )


def measure(options, name, batch_size, args, steps, warmup):
    """The records of config `name` at `batch_size`, one per precision."""
    common = dict(
        args=[*args, f"--batch_size={batch_size}"],
        stand_in_data=options.stand_in_data,
    )
    pipeline_result = _spawn(
        dict(common, kind="pipeline", seconds=options.pipeline_seconds)
    )
    train = dict(
        common,
        kind="train",
        steps=steps,
        warmup_steps=warmup,
        matmul_size=options.matmul_size,
    )
    precisions = list(options.precisions)
    isolated = name in options.isolate or len(precisions) == 1
    groups = [[p] for p in precisions] if isolated else [precisions]
    records = {}
    for group in groups:
        result = _spawn(dict(train, precisions=group))
        per_precision = result.pop("precisions", {})
        for precision in group:
            records[precision] = {**result, **per_precision.get(precision, {})}
    if not isolated:
        # Peak RSS of one precision alone: a short run in its own process.
        for precision in precisions:
            result = _spawn(
                dict(train, precisions=[precision], steps=0, warmup_steps=1)
            )
            memory = {
                k: result[k]
                for k in ("peak_memory_mb", "baseline_memory_mb", "error")
                if k in result
            }
            records[precision].update(memory)
    base = records.get("float32", {}).get("images_per_s")
    for record in records.values():
        if base and "images_per_s" in record:
            record["float32_ratio"] = record["images_per_s"] / base
    return [
        {
            "config": name,
            "precision": precision,
            "batch_size": batch_size,
            "steps": steps,
            "warmup_steps": warmup,
            **pipeline_result,
            **records[precision],
        }
        for precision in precisions
    ]


def format_row(record):
    """One line of the printed table."""
    if "error" in record:
        return (
            f"{record['config']:8} {record['precision']:19} "
            f"{record['batch_size']:>5}  failed: "
            f"{record['error'].strip().splitlines()[-1][:60]}"
        )
    pipeline_rate = record["pipeline_images_per_s"]
    return (
        f"{record['config']:8} {record['precision']:19} "
        f"{record['batch_size']:>5} {record['images_per_s']:>9.1f} "
        f"{record['patches_per_s']:>10.0f} "
        f"{record['flops_per_image'] / 1e9:>9.3f} "
        f"{record['achieved_flops'] / 1e9:>9.1f} "
        f"{record['peak_flops'] / 1e9:>9.1f} {record['mfu']:>6.1%} "
        f"{pipeline_rate:>9.1f} "
        f"{pipeline_rate / record['images_per_s']:>6.1f}x "
        f"{record['peak_memory_mb']:>8.0f}"
    )


def ratios(records):
    """Lines comparing each precision's images/s with float32's."""
    lines = []
    for r in records:
        if "float32_ratio" in r and r["precision"] != "float32":
            where = "same process" if r["interleaved"] else "two processes"
            lines.append(
                f"{r['config']} batch {r['batch_size']}: {r['precision']} "
                f"{r['float32_ratio']:.2f}x float32 images/s ({where})"
            )
    return lines


def run(options, output, argv=(), echo=print):
    """Measures every planned job, `echo`s the table and writes
    `{machine, argv, records}` to `output` (any TF file system)."""
    planned = plan(options)
    records = []
    echo(TABLE_HEADER)
    for entry in planned:
        for record in measure(options, *entry):
            records.append(record)
            echo(format_row(record))
    for line in ratios(records):
        echo(line)
    artifacts.write_json(
        output, dict(machine=machine(), argv=list(argv), records=records)
    )
    return records
