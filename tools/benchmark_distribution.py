"""Training speed across replicas, all-reduce paths and steps per loop.

    python tools/benchmark_distribution.py --configs=demo,cifar10 \
        --output=distribution.json

In ONE process with the CPU split into two logical devices, for each
config (a flagfile in flags/), the pretraining step of `trainer.Trainer`
is timed in interleaved rounds (one call of each variant per round, so a
change in the machine's load hits all alike):

- `one_device`: the default strategy, the whole batch on one device;
- `two_replicas`: MirroredStrategy on the two logical devices with TF's
  default cross-device ops and the single all-reduce per step;
- `two_replicas_double`: the trainer before the single all-reduce: the
  optimizer's own all-reduce left on after the trainer's (the second sum,
  which made the old trainer divide by the replicas), through
  `ReductionToOneDevice` as the old `make_strategy` forced (the numbers
  of this variant are not a valid training, only its cost);
- `steps_per_loop_N`: one device, N steps per compiled call (each call
  counts N steps).

The two logical devices share the same physical cores, so two replicas
are not faster than one here: the ratio measures what distribution costs
(collectives, per-replica overhead), which is what the single all-reduce
removes. Record `lscpu`'s model with the numbers.
"""

import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

_CPUS = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _CPUS[0], [tf.config.LogicalDeviceConfiguration()] * 2
)

import keras  # noqa: E402
from absl import app, flags  # noqa: E402

from cpc_tf.config import flags as cpc_flags  # noqa: E402
from cpc_tf.training import builders, distribute, machine, trainer  # noqa: E402
from cpc_tf.training.optimizers import make_optimizer  # noqa: E402
from cpc_tf.training.tasks import CPCTask  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWO = ["/cpu:0", "/cpu:1"]

flags.DEFINE_list("configs", ["demo", "cifar10"], "Flagfiles in flags/.")
flags.DEFINE_integer("steps", 10, "Timed rounds (one call per variant).")
flags.DEFINE_integer("warmup", 2, "Untimed rounds first.")
flags.DEFINE_integer("steps_per_loop", 10, "N of the steps_per_loop variant.")
flags.DEFINE_string("output", "distribution.json", "JSON results.")


def parse_config(name):
    flagfile = os.path.join(ROOT, "flags", f"{name}.cfg")
    return cpc_flags.parse_pretrain_args([f"--flagfile={flagfile}"], "bench")


class Variant:
    """One way of running the step: a strategy, a trainer, an iterator."""

    def __init__(self, name, config, strategy, batch, loop=1, double=False):
        self.name = name
        self.loop = loop
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = builders.build_cpc_model(config)
            optimizer = make_optimizer(config.optim, 1000)
        task = CPCTask(model, optimizer, config.run.negatives)
        skip = distribute.skip_gradient_aggregation
        if double:
            distribute.skip_gradient_aggregation = lambda o: o
        try:
            self.trainer = trainer.Trainer(
                strategy,
                task,
                trainer.TrainerOptions(
                    model_dir="/tmp/unused",
                    steps=1000,
                    clip_global_norm=config.optim.clip_global_norm,
                    ema_decay=config.optim.ema_decay,
                    verbose=False,
                    steps_per_loop=loop,
                ),
            )
        finally:
            distribute.skip_gradient_aggregation = skip
        per_replica = batch.shape[0] // strategy.num_replicas_in_sync
        self.iterator = iter(
            strategy.distribute_datasets_from_function(
                lambda _: tf.data.Dataset.from_tensors(
                    batch[:per_replica]
                ).repeat()
            )
        )
        self.seconds = []

    def call(self):
        start = time.perf_counter()
        outputs = self.trainer.train_steps(self.iterator, self.loop)
        float(outputs[0])
        self.seconds.append((time.perf_counter() - start) / self.loop)


def measure(name, steps, warmup, steps_per_loop):
    config = parse_config(name)
    data, batch = config.data, config.run.batch_size
    grid, patch = data.grid_size, data.patch_size
    batch_data = tf.random.stateless_uniform(
        [batch, grid, grid, patch, patch, 3], [0, 1], minval=-1.0
    )
    one = tf.distribute.get_strategy()
    two = distribute.make_strategy("mirrored", devices=TWO)
    old = tf.distribute.MirroredStrategy(
        TWO, cross_device_ops=tf.distribute.ReductionToOneDevice()
    )
    variants = [
        Variant("one_device", config, one, batch_data),
        Variant("two_replicas", config, two, batch_data),
        Variant("two_replicas_double", config, old, batch_data, double=True),
        Variant(
            f"steps_per_loop_{steps_per_loop}",
            config,
            one,
            batch_data,
            loop=steps_per_loop,
        ),
    ]
    for round_index in range(warmup + steps):
        for variant in variants:
            variant.call()
        if round_index == warmup - 1:
            for variant in variants:
                variant.seconds.clear()
    result = {}
    for variant in variants:
        median = statistics.median(variant.seconds)
        result[variant.name] = dict(
            images_per_s=batch / median, step_seconds=variant.seconds
        )
    base = result["one_device"]["images_per_s"]
    for record in result.values():
        record["vs_one_device"] = record["images_per_s"] / base
    result["single_vs_double"] = (
        result["two_replicas"]["images_per_s"]
        / result["two_replicas_double"]["images_per_s"]
    )
    return result


def main(argv):
    del argv
    values = flags.FLAGS
    results = dict(
        machine=machine.cpu_model(),
        python=sys.version.split()[0],
        tensorflow=tf.__version__,
        configs={},
    )
    for name in values.configs:
        results["configs"][name] = measure(
            name, values.steps, values.warmup, values.steps_per_loop
        )
        row = results["configs"][name]
        print(
            name,
            {
                k: round(v["images_per_s"], 1)
                for k, v in row.items()
                if isinstance(v, dict)
            },
            "single/double",
            round(row["single_vs_double"], 3),
            flush=True,
        )
    with tf.io.gfile.GFile(values.output, "w") as f:
        f.write(json.dumps(results, indent=2))


if __name__ == "__main__":
    app.run(main)
