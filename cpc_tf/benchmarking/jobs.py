"""What one benchmark subprocess measures.

A job is a dict: `kind` ("train" or "pipeline"), `args` (the config's
command-line flags), `stand_in_data` and the kind's settings. A "train"
job builds each of its precisions' models as `cpc_tf.pretrain` does and
interleaves their `Trainer` steps on one fixed batch of real augmented
patches (`train_job`); a "pipeline" job times `pretrain_dataset` alone.
`python -m cpc_tf.benchmarking.jobs JOB_JSON` runs one and writes its
record to the job's `result` path.
"""

import dataclasses
import json
import os
import resource
import statistics
import sys
import tempfile
import time

import keras
import tensorflow as tf

from cpc_tf.benchmarking import flops as flops_lib
from cpc_tf.config import (
    FlagError,
)
from cpc_tf.config import flags as cpc_flags
from cpc_tf.data import sources
from cpc_tf.protocols import runtime
from cpc_tf.rundir import artifacts
from cpc_tf.training import builders, trainer
from cpc_tf.training.optimizers import make_optimizer
from cpc_tf.training.tasks import CPCTask

PRECISIONS = (
    "float32",
    "mixed_bfloat16",
    "float32_jit",
    "mixed_bfloat16_jit",
)
MIN_PEAK_SAMPLES = 3


def parse_config(args):
    """A `PretrainConfig` from command-line style `args`."""
    return cpc_flags.parse_pretrain_args(args, program="benchmark")


def split_precision(precision):
    """`"mixed_bfloat16_jit"` -> `("mixed_bfloat16", True)`."""
    if precision not in PRECISIONS:
        raise FlagError(
            f"--precisions: expected some of {PRECISIONS}, got {precision!r}."
        )
    policy = precision.removesuffix("_jit")
    return policy, policy != precision


def _rss_mb():
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb():
    # ru_maxrss is in kilobytes on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _accelerator_memory_mb(key):
    """TF's `key` ("current" or "peak") memory of the first GPU in MiB,
    or None without one (a CPU's step memory is its RSS)."""
    if not tf.config.list_physical_devices("GPU"):
        return None
    return tf.config.experimental.get_memory_info("GPU:0")[key] / 2**20


def with_available_source(config, stand_in):
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
    dataset, _ = builders.pretrain_patches(
        config.data,
        config.run.batch_size,
        config.run.seed,
        shuffle_buffer=shuffle_buffer,
    )
    return dataset


def pipeline_job(config, job):
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


class _Run:
    """One precision's model, `Trainer` and step times, built as
    `pretrain.run` builds them (default strategy)."""

    def __init__(self, config, precision, patches, model_dir, total_steps):
        self.precision = precision
        self.policy, jit = split_precision(precision)
        strategy = tf.distribute.get_strategy()
        with runtime.dtype_policy(self.policy), strategy.scope():
            keras.utils.set_random_seed(config.run.seed)
            self.model = builders.build_cpc_model(config)
            optimizer = make_optimizer(config.optim, total_steps)
        task = CPCTask(
            self.model,
            optimizer,
            config.run.negatives,
            microbatches=config.memory.microbatches,
        )
        # Model FLOPs: count the one-chunk loss, whose matmuls the profiler
        # sees (a chunked loss runs them in loops, and recomputes them).
        chunk_size = self.model.loss_chunk_size
        self.model.loss_chunk_size = None
        with runtime.dtype_policy(self.policy):
            self.flops = flops_lib.training_flops(task, patches.shape)
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
        with runtime.dtype_policy(self.policy):
            start = time.perf_counter()
            self.loss = float(self.trainer.train_steps(self.iterator, 1)[0])
            self.seconds.append(time.perf_counter() - start)


def _sample_peaks(samples, size):
    """Appends one matmul peak sample to each `{dtype: [rates]}` entry."""
    for dtype, rates in samples.items():
        rates.append(flops_lib.matmul_peak(dtype, size, repeats=1))


def _precision_record(run, config, warmup, samples, peaks):
    batch_size = config.run.batch_size
    per_image = {k: v / batch_size for k, v in run.flops.items()}
    matmul = flops_lib.matmul_flops(per_image)
    images_per_s = batch_size / statistics.median(run.seconds[warmup:])
    dtype = "bfloat16" if "bfloat16" in run.policy else "float32"
    achieved = matmul * images_per_s
    return dict(
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


def train_job(config, job):
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
        device_baseline = _accelerator_memory_mb("current")
        for _ in range(warmup):
            for run in runs:
                run.step()
        # Every step allocates alike, so the peak is reached by now, before
        # the matmul samples allocate their operands.
        peak_memory = _peak_rss_mb()
        device_peak = _accelerator_memory_mb("peak")
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
        device_peak_memory_mb=device_peak,
        device_baseline_memory_mb=device_baseline,
        logits_mb=flops_lib.logits_megabytes(config, batch_size),
        parameters=runs[0].model.encoder.count_params(),
        interleaved=len(runs) > 1,
        precisions={},
    )
    if not steps:
        return result
    peaks = {dtype: statistics.median(v) for dtype, v in samples.items()}
    for run in runs:
        result["precisions"][run.precision] = _precision_record(
            run, config, warmup, samples, peaks
        )
    return result


def run_job(job):
    """Runs one job dict (kind "train" or "pipeline"); returns its record."""
    config = with_available_source(
        parse_config(job["args"]), job["stand_in_data"]
    )
    run = train_job if job["kind"] == "train" else pipeline_job
    return dict(run(config, job), train_data=config.data.train_data)


if __name__ == "__main__":
    job = json.loads(sys.argv[1])
    artifacts.write_json(job["result"], run_job(job))
