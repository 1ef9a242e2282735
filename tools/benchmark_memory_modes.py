"""Step time of the memory settings, interleaved in one process.

    python tools/benchmark_memory_modes.py --config=cifar10 \
        --batch_size=256 --variants=none:1,blocks:1,stages:1,none:4,blocks:4

In ONE process, for a flagfile of flags/, one pretraining `Trainer` per
variant `REMAT:MICROBATCHES` (each its own model and optimizer, built
alike from the same seed) steps on the same fixed batch in interleaved
rounds (one step of each variant per round), so that a change in the
machine's load hits every variant alike. Prints each variant's median
step time and its ratio to the first variant's: what rematerialisation
(recomputing the encoder's forward pass) and micro-batches (encoding
twice) cost. Peak memory needs one process per setting
(`python -m cpc_tf.benchmark --set=CONFIG:--remat=...`). Record
`lscpu`'s model with the numbers.
"""

import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from cpc_tf.config import flags as cpc_flags  # noqa: E402
from cpc_tf.training import builders, machine, trainer  # noqa: E402
from cpc_tf.training.tasks import CPCTask  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

flags.DEFINE_string("config", "cifar10", "A flagfile in flags/.")
flags.DEFINE_integer("batch_size", 0, "Batch size (0: the config's).")
flags.DEFINE_list(
    "variants",
    ["none:1", "blocks:1", "stages:1", "none:4", "blocks:4"],
    "REMAT:MICROBATCHES settings; ratios are to the first.",
)
flags.DEFINE_integer("rounds", 6, "Timed rounds (one step of each).")
flags.DEFINE_integer("warmup", 2, "Untimed rounds first.")
flags.DEFINE_string("output", "memory_modes.json", "JSON results.")
FLAGS = flags.FLAGS


def parse(*extra):
    """The `PretrainConfig` of `--config` (and `--batch_size`), `extra`."""
    args = [f"--flagfile={ROOT}/flags/{FLAGS.config}.cfg", *extra]
    if FLAGS.batch_size:
        args.append(f"--batch_size={FLAGS.batch_size}")
    return cpc_flags.parse_pretrain_args(args)


def build(name, model_dir, batch):
    """`step()`, timing one step of variant `name` ("REMAT:K")."""
    remat, microbatches = name.split(":")
    config = parse(f"--remat={remat}", f"--microbatches={microbatches}")
    keras.utils.set_random_seed(config.run.seed)
    parts = builders.pretraining(config, 10**6, verbose=False)
    task = CPCTask(
        parts.model,
        parts.optimizer,
        config.run.negatives,
        microbatches=config.memory.microbatches,
    )
    options = builders.trainer_options(
        config.run, config.optim, 10**6, model_dir, verbose=False
    )
    loop = trainer.Trainer(tf.distribute.get_strategy(), task, options)
    iterator = iter(
        tf.distribute.get_strategy().experimental_distribute_dataset(
            tf.data.Dataset.from_tensors(batch).repeat()
        )
    )

    def step():
        start = time.perf_counter()
        float(loop.train_steps(iterator, 1)[0])
        return time.perf_counter() - start

    return step


def main(argv):
    del argv
    config = parse()
    patches, _ = builders.pretrain_patches(
        config.data, config.run.batch_size, seed=0
    )
    batch = next(iter(patches))
    with tempfile.TemporaryDirectory() as model_dir:
        steps = {
            name: build(name, os.path.join(model_dir, str(i)), batch)
            for i, name in enumerate(FLAGS.variants)
        }
        for _ in range(FLAGS.warmup):
            for step in steps.values():
                step()
        times = {name: [] for name in steps}
        for _ in range(FLAGS.rounds):
            for name, step in steps.items():
                times[name].append(step())
    base = statistics.median(times[FLAGS.variants[0]])
    results = dict(
        machine=machine.cpu_model(),
        argv=sys.argv,
        config=FLAGS.config,
        batch_size=config.run.batch_size,
        variants={},
    )
    print(f"{'remat:K':12} {'step s':>8} {'ratio':>6}")
    for name, seconds in times.items():
        median = statistics.median(seconds)
        results["variants"][name] = dict(
            step_seconds=median, ratio=median / base, samples=seconds
        )
        print(f"{name:12} {median:8.3f} {median / base:6.2f}")
    with tf.io.gfile.GFile(FLAGS.output, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    app.run(main)
