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
`--stand_in_data`, recorded as `train_data`.
"""

import contextlib
import dataclasses
import functools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from cpc_tf import builders, trainer  # noqa: E402
from cpc_tf import flags as cpc_flags  # noqa: E402
from cpc_tf.config import (  # noqa: E402
    DataConfig,
    KnnConfig,
    ModelConfig,
    OptimConfig,
    PretrainConfig,
    RunConfig,
)
from cpc_tf.data import pipeline, sources  # noqa: E402
from cpc_tf.optimizers import make_optimizer  # noqa: E402
from cpc_tf.tasks import CPCTask  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRECISIONS = (
    "float32",
    "mixed_bfloat16",
    "float32_jit",
    "mixed_bfloat16_jit",
)
# Ops whose FLOPs are dense linear algebra: the model FLOPs of MFU.
MATMUL_OPS = (
    "Conv2D",
    "Conv2DBackpropInput",
    "Conv2DBackpropFilter",
    "DepthwiseConv2dNative",
    "MatMul",
    "BatchMatMul",
    "BatchMatMulV2",
    "BatchMatMulV3",
)
# Ops that run a nested function body, invisible to the profiler.
NESTED_OPS = (
    "While",
    "StatelessWhile",
    "If",
    "StatelessIf",
    "Case",
    "StatelessCase",
    "PartitionedCall",
    "StatefulPartitionedCall",
)
# Per-config defaults that differ from the flagfile (v2: a tiny batch).
CONFIG_DEFAULTS = {"v2": dict(batch_size=2, steps=2, warmup_steps=2)}
DEFAULT_STEPS = 10
MIN_PEAK_SAMPLES = 3
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

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_list(
        "configs", ["demo", "cifar10", "v2"], "Flagfiles in flags/ to run."
    )
    flags.DEFINE_list(
        "precisions",
        ["float32", "mixed_bfloat16", "float32_jit"],
        "|".join(PRECISIONS) + " (_jit: --jit_compile).",
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
        f"[CONFIG:]N timed steps (default {DEFAULT_STEPS}, v2: 2).",
    )
    flags.DEFINE_list(
        "warmup_steps",
        [],
        f"[CONFIG:]N untimed steps first (default {DEFAULT_WARMUP}, v2: 2).",
    )
    flags.DEFINE_multi_string(
        "set",
        [],
        "CONFIG:--flag=value, a config flag overridden for CONFIG only "
        "(repeatable), e.g. --set=cifar10:--loss_chunk_size=576.",
    )
    flags.DEFINE_string(
        "stand_in_data",
        "tfrecord:../shared/data/cifar10/train-*.tfrecord",
        "Source read when a config's --train_data cannot be opened.",
    )
    flags.DEFINE_float(
        "pipeline_seconds", 10.0, "Time the input pipeline for this long."
    )
    flags.DEFINE_integer(
        "matmul_size", 4096, "Side of the square matmul of the FLOP/s peak."
    )
    flags.DEFINE_list(
        "isolate",
        ["v2"],
        "Configs whose precisions run in separate processes (one model at "
        "a time in memory); the others interleave their steps in one.",
    )
    flags.DEFINE_string("job", None, "Internal: one subprocess's job (JSON).")


def parse_config(args):
    """A `PretrainConfig` from command-line style `args` (own FlagValues)."""
    values = flags.FlagValues()
    cpc_flags.define_config_flags(
        DataConfig,
        ModelConfig,
        OptimConfig,
        RunConfig,
        KnnConfig,
        flag_values=values,
    )
    values(["benchmark", *args])
    return cpc_flags.config_from_flags(PretrainConfig, values)


def split_precision(precision):
    """`"mixed_bfloat16_jit"` -> `("mixed_bfloat16", True)`."""
    if precision not in PRECISIONS:
        raise app.UsageError(
            f"--precisions: expected some of {PRECISIONS}, got {precision!r}."
        )
    policy = precision.removesuffix("_jit")
    return policy, policy != precision


def count_flops(fn, *input_specs):
    """FLOPs of one call of `fn`, by op type, from the TF profiler.

    `fn` is traced with `input_specs` (fully defined `tf.TensorSpec`s) and
    the profiler's `float_operation` statistics are read off the graph's
    static shapes; nothing runs. Only ops that `fn`'s outputs depend on
    count: gradient ops nothing consumes (e.g. the input gradient of the
    first convolution) are pruned before running, so they cost nothing.
    Ops without a FLOP statistic (ReLU, exp, casts) count nothing; `fn`
    must not run nested functions (loops, conditionals, XLA clusters),
    whose FLOPs the profiler cannot see: that raises a `ValueError`.

    Returns:
        `{op_type: flops}` for the op types with any FLOPs.
    """
    graph = tf.function(fn).get_concrete_function(*input_specs).graph
    live, stack = set(), [tensor.op for tensor in graph.outputs]
    while stack:
        op = stack.pop()
        if op.name in live:
            continue
        if op.type in NESTED_OPS:
            raise ValueError(
                f"{op.name} ({op.type}) runs a nested function, whose FLOPs "
                "the profiler does not count."
            )
        live.add(op.name)
        stack.extend(tensor.op for tensor in op.inputs)
        stack.extend(op.control_inputs)
    builder = tf.compat.v1.profiler.ProfileOptionBuilder
    options = builder(builder.float_operation()).with_empty_output().build()
    stack = [tf.compat.v1.profiler.profile(graph, cmd="scope", options=options)]
    by_op = {}
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.name in live and node.float_ops:
            op_type = graph.get_operation_by_name(node.name).type
            by_op[op_type] = by_op.get(op_type, 0) + int(node.float_ops)
    return by_op


def training_flops(task, batch_shape):
    """`{op_type: flops}` of the loss and its gradient, as the training step
    computes them, on a float32 batch of `batch_shape`."""
    variables = task.model.trainable_variables

    def forward_backward(patches):
        with tf.GradientTape() as tape:
            loss, _ = task.compute(patches, training=True)
        return loss, tape.gradient(loss, variables)

    return count_flops(forward_backward, tf.TensorSpec(batch_shape))


@functools.cache
def _compiled_matmul(jit, dtype, size):
    """A traced (and, with `jit`, XLA-compiled) `size`-square matmul."""
    matmul = tf.function(tf.linalg.matmul, jit_compile=jit)
    operand = tf.zeros([size, size], dtype)
    matmul(operand, operand).numpy()
    return matmul


def matmul_peak(dtype, size=4096, repeats=4):
    """Best FLOP/s of a `size`-square matmul in `dtype`, with and without
    XLA (oneDNN uses AMX for bfloat16, XLA's CPU dot does not); the
    compilation is done once per process and not timed."""
    seed = tf.constant([1, 2])
    a = tf.cast(tf.random.stateless_normal([size, size], seed), dtype)
    b = tf.cast(tf.random.stateless_normal([size, size], seed + 1), dtype)
    best = float("inf")
    for jit in (False, True):
        matmul = _compiled_matmul(jit, dtype, size)
        for _ in range(repeats):
            start = time.perf_counter()
            matmul(a, b).numpy()
            best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def logits_megabytes(config, batch_size):
    """Float32 InfoNCE logits of one step: `[B*(g-k)*g, B*g*g]` for each
    direction and offset `k`, in MB."""
    model, grid = config.model, config.data.grid_size
    offsets = range(model.steps_to_ignore + 1, model.steps_to_predict + 1)
    cells = sum(
        batch_size * (grid - k) * grid * batch_size * grid * grid
        for k in offsets
    )
    return 4 * cells * len(model.directions) / 2**20


def _rss_mb():
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb():
    # ru_maxrss is in kilobytes on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _with_available_source(config, stand_in):
    """`config`, reading `stand_in` if its training source will not open."""
    data = config.data
    try:
        sources.load_source(data.train_data, data_dir=data.data_dir or None)
    except sources.SourceError:
        data = dataclasses.replace(data, train_data=stand_in, data_dir="")
        return dataclasses.replace(config, data=data)
    return config


def _dataset(config, shuffle_buffer):
    """The training patches of `config`, as `pretrain.run` reads them."""
    data = config.data
    dataset, _ = pipeline.pretrain_dataset(
        data.train_data,
        batch_size=config.run.batch_size,
        training=True,
        image_size=data.image_size,
        crop_size=data.crop_size,
        patch_size=data.patch_size,
        patch_stride=data.patch_stride,
        augment=builders.augment_config(data),
        seed=config.run.seed,
        data_dir=data.data_dir or None,
        shuffle_buffer=shuffle_buffer,
    )
    return dataset.map(lambda patches, labels: patches)


def _pipeline_job(config, job):
    """Images/s of the training input alone, after two warm-up batches
    (the first one fills the shuffle buffer)."""
    iterator = iter(_dataset(config, config.data.shuffle_buffer))
    for _ in range(2):
        next(iterator)
    batches, start = 0, time.perf_counter()
    while batches < 3 or time.perf_counter() - start < job["seconds"]:
        next(iterator)
        batches += 1
    seconds = time.perf_counter() - start
    return dict(
        pipeline_images_per_s=batches * config.run.batch_size / seconds,
        pipeline_batches=batches,
    )


@contextlib.contextmanager
def _policy(name):
    keras.mixed_precision.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


class _Run:
    """One precision's model, `Trainer` and step times, built as
    `pretrain.run` builds them (default strategy)."""

    def __init__(self, config, precision, patches, model_dir, total_steps):
        self.precision = precision
        self.policy, jit = split_precision(precision)
        strategy = tf.distribute.get_strategy()
        with _policy(self.policy), strategy.scope():
            keras.utils.set_random_seed(config.run.seed)
            self.model = builders.build_cpc_model(config)
            optimizer = make_optimizer(config.optim, total_steps)
        task = CPCTask(self.model, optimizer, config.run.negatives)
        # Model FLOPs: count the one-chunk loss, whose matmuls the profiler
        # sees (a chunked loss runs them in loops, and recomputes them).
        chunk_size = self.model.loss_chunk_size
        self.model.loss_chunk_size = None
        with _policy(self.policy):
            self.flops = training_flops(task, patches.shape)
        self.model.loss_chunk_size = chunk_size
        self.trainer = trainer.Trainer(
            strategy,
            task,
            trainer.TrainerOptions(
                model_dir=os.path.join(model_dir, precision),
                steps=total_steps,
                clip_global_norm=config.optim.clip_global_norm,
                ema_decay=config.optim.ema_decay,
                jit_compile=jit,
                verbose=False,
                images_per_step=config.run.batch_size,
            ),
        )
        self.iterator = iter(
            strategy.distribute_datasets_from_function(
                lambda _: tf.data.Dataset.from_tensors(patches).repeat()
            )
        )
        self.seconds = []

    def step(self):
        """One timed `Trainer` step (the same `tf.function` `fit` runs)."""
        with _policy(self.policy):
            start = time.perf_counter()
            self.loss = float(
                self.trainer._train_loop(
                    self.iterator, tf.constant(1, tf.int64), tf.constant(0.0)
                )[0]
            )
            self.seconds.append(time.perf_counter() - start)


def _sample_peaks(samples, size):
    """Appends one matmul peak sample to each `{dtype: [rates]}` entry."""
    for dtype, rates in samples.items():
        rates.append(matmul_peak(dtype, size, repeats=1))


def _train_job(config, job):
    """Interleaves the steps of `job["precisions"]` in rounds of one step
    each, then a matmul peak sample per dtype, so that a change in the load
    of a shared machine hits every precision and the peak alike."""
    batch_size = config.run.batch_size
    patches = next(iter(_dataset(config, batch_size)))
    steps, warmup = job["steps"], job["warmup_steps"]
    samples = {"float32": [], "bfloat16": []}
    with tempfile.TemporaryDirectory() as model_dir:
        runs = [
            _Run(config, precision, patches, model_dir, steps + warmup)
            for precision in job["precisions"]
        ]
        baseline = _rss_mb()
        for _ in range(warmup):
            for run in runs:
                run.step()
        # Every step allocates alike, so the peak is reached by now, before
        # the matmul samples allocate their operands.
        peak_memory = _peak_rss_mb()
        for _ in range(steps):
            for run in runs:
                run.step()
            _sample_peaks(samples, job["matmul_size"])
        # With few rounds (v2), more samples: one busy moment of a shared
        # machine must not set the peak.
        for _ in range(MIN_PEAK_SAMPLES - steps if steps else 0):
            _sample_peaks(samples, job["matmul_size"])
    result = dict(
        peak_memory_mb=peak_memory,
        baseline_memory_mb=baseline,
        logits_mb=logits_megabytes(config, batch_size),
        parameters=runs[0].model.encoder.count_params(),
        interleaved=len(runs) > 1,
        precisions={},
    )
    if not steps:
        return result
    peaks = {dtype: statistics.median(v) for dtype, v in samples.items()}
    for run in runs:
        per_image = {k: v / batch_size for k, v in run.flops.items()}
        matmul = sum(v for k, v in per_image.items() if k in MATMUL_OPS)
        images_per_s = batch_size / statistics.median(run.seconds[warmup:])
        dtype = "bfloat16" if "bfloat16" in run.policy else "float32"
        achieved = matmul * images_per_s
        result["precisions"][run.precision] = dict(
            images_per_s=images_per_s,
            patches_per_s=images_per_s * config.data.grid_size**2,
            flops_per_image=matmul,
            elementwise_flops_per_image=sum(per_image.values()) - matmul,
            flops_by_op=per_image,
            achieved_flops=achieved,
            peak_flops=peaks[dtype],
            peak_flops_best=max(samples[dtype]),
            peak_flops_float32=peaks["float32"],
            peak_flops_bfloat16=peaks["bfloat16"],
            mfu=achieved / peaks[dtype],
            step_seconds=run.seconds[warmup:],
            warmup_seconds=run.seconds[:warmup],
            last_loss=run.loss,
        )
    return result


def run_job(job):
    """Runs one job dict (kind "train" or "pipeline"); returns its record."""
    config = _with_available_source(
        parse_config(job["args"]), job["stand_in_data"]
    )
    run = _train_job if job["kind"] == "train" else _pipeline_job
    return dict(run(config, job), train_data=config.data.train_data)


def _per_config(entries, flag):
    """`{config or None: [int, ...]}` from `[CONFIG:]N` flag entries."""
    values = {}
    for entry in entries:
        name, _, value = entry.rpartition(":")
        try:
            values.setdefault(name or None, []).append(int(value))
        except ValueError as error:
            raise app.UsageError(
                f"--{flag}: expected [CONFIG:]N, got {entry!r}."
            ) from error
    return values


def _setting(values, name, key, fallback):
    chosen = values.get(name) or values.get(None)
    if chosen:
        return chosen
    return [CONFIG_DEFAULTS.get(name, {}).get(key, fallback)]


def _config_args(name):
    flagfile = os.path.join(ROOT, "flags", f"{name}.cfg")
    if not os.path.exists(flagfile):
        raise app.UsageError(f"--configs: no flagfile {flagfile}.")
    overrides = []
    for entry in FLAGS.set:
        target, _, flag = entry.partition(":")
        if not flag.startswith("--"):
            raise app.UsageError(
                f"--set: expected CONFIG:--flag=value, got {entry!r}."
            )
        if target == name:
            overrides.append(flag)
    return [f"--flagfile={flagfile}", *overrides, "--strategy=default"]


def _spawn(job):
    """Runs `job` in a fresh Python process; returns its record."""
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "result.json")
        process = subprocess.run(
            [
                sys.executable,
                "-m",
                "cpc_tf.benchmark",
                f"--job={json.dumps(dict(job, result=path))}",
            ],
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        if process.returncode:
            return dict(error=process.stdout[-2000:])
        with open(path) as f:
            return json.load(f)


def _machine():
    model = platform.processor() or "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        f.seek(0)
        amx = " amx_bf16" in f.read()
    return dict(
        cpu=model,
        cores=os.cpu_count(),
        amx_bf16=amx,
        tensorflow=tf.__version__,
        keras=keras.__version__,
    )


def _measure(name, batch_size, args, steps, warmup):
    """The records of config `name` at `batch_size`, one per precision."""
    common = dict(
        args=[*args, f"--batch_size={batch_size}"],
        stand_in_data=FLAGS.stand_in_data,
    )
    pipeline_result = _spawn(
        dict(common, kind="pipeline", seconds=FLAGS.pipeline_seconds)
    )
    train = dict(
        common,
        kind="train",
        steps=steps,
        warmup_steps=warmup,
        matmul_size=FLAGS.matmul_size,
    )
    precisions = FLAGS.precisions
    isolated = name in FLAGS.isolate or len(precisions) == 1
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


def _plan():
    """(config, batch size, config args, steps, warm-up steps) to run."""
    batch_sizes = _per_config(FLAGS.batch_size, "batch_size")
    steps = _per_config(FLAGS.steps, "steps")
    warmups = _per_config(FLAGS.warmup_steps, "warmup_steps")
    for precision in FLAGS.precisions:
        split_precision(precision)
    for name in FLAGS.configs:
        args = _config_args(name)
        default_batch = parse_config(args).run.batch_size
        step_count = _setting(steps, name, "steps", DEFAULT_STEPS)[-1]
        warmup = _setting(warmups, name, "warmup_steps", DEFAULT_WARMUP)[-1]
        if step_count < 1 or warmup < 1:
            raise app.UsageError(
                "--steps and --warmup_steps: need at least 1 of each (the "
                "peak memory is read after the warm-up steps)."
            )
        for batch in _setting(batch_sizes, name, "batch_size", default_batch):
            yield name, batch, args, step_count, warmup


def _format_row(record):
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


TABLE_HEADER = (
    f"{'config':8} {'precision':19} {'batch':>5} {'images/s':>9} "
    f"{'patches/s':>10} {'GFLOP/img':>9} {'GFLOP/s':>9} {'peak':>9} "
    f"{'MFU':>6} {'pipe im/s':>9} {'pipe/t':>7} {'peak MB':>8}"
)


def _ratios(records):
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


def main(argv):
    del argv
    if FLAGS.job:
        job = json.loads(FLAGS.job)
        with open(job["result"], "w") as f:
            json.dump(run_job(job), f)
        return
    records = []
    print(TABLE_HEADER, flush=True)
    for plan in _plan():
        for record in _measure(*plan):
            records.append(record)
            print(_format_row(record), flush=True)
    for line in _ratios(records):
        print(line)
    with open(FLAGS.output, "w") as f:
        json.dump(
            dict(machine=_machine(), argv=sys.argv, records=records),
            f,
            indent=2,
        )
    print(f"-> {FLAGS.output}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
