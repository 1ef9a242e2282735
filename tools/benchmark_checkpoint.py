"""What a checkpoint save costs the training loop, synchronous or not.

    python tools/benchmark_checkpoint.py --config=cifar10 --rounds=6

In ONE process, the pretraining step of `trainer.Trainer` for a flagfile
of flags/ on a fixed batch (default strategy), in interleaved rounds of
three variants, so that a change in the machine's load hits all alike:

- `step`: one training step, no save;
- `sync`: a synchronous save (`CheckpointManager.save`), then one step;
- `async`: an asynchronous save (`--async_checkpoint`), then one step,
  then the wait for the write still in flight (`Checkpoint.sync`).

For each variant it prints the median seconds and the ratio to a plain
step: the part of a save the loop waits for (the blocking save, the
slower step beside a background write, and what is left to wait for at
the end). Record `lscpu`'s model with the numbers.
"""

import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from cpc_tf.config import flags as cpc_flags  # noqa: E402
from cpc_tf.training import builders, machine, saving, trainer  # noqa: E402
from cpc_tf.training.tasks import CPCTask  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

flags.DEFINE_string("config", "cifar10", "A flagfile in flags/.")
flags.DEFINE_integer("rounds", 6, "Timed rounds (one of each variant).")
flags.DEFINE_integer("batch_size", 0, "Batch size (0: the config's).")
flags.DEFINE_string("output", "checkpoint.json", "JSON results.")
FLAGS = flags.FLAGS


def _timed(function):
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main(argv):
    del argv
    args = [f"--flagfile={ROOT}/flags/{FLAGS.config}.cfg"]
    if FLAGS.batch_size:
        args.append(f"--batch_size={FLAGS.batch_size}")
    config = cpc_flags.parse_pretrain_args(args)
    parts = builders.pretraining(config, 10**6, verbose=False)
    task = CPCTask(parts.model, parts.optimizer, config.run.negatives)
    strategy = tf.distribute.get_strategy()
    with tempfile.TemporaryDirectory() as model_dir:
        options = builders.trainer_options(
            config.run, config.optim, 10**6, model_dir, verbose=False
        )
        loop = trainer.Trainer(strategy, task, options)
        patches, _ = builders.pretrain_patches(
            config.data, config.run.batch_size, seed=0
        )
        batch = next(iter(patches))
        iterator = iter(
            strategy.experimental_distribute_dataset(
                tf.data.Dataset.from_tensors(batch).repeat()
            )
        )

        def step():
            float(loop.train_steps(iterator, 1)[0])

        writers = {
            name: saving.CheckpointWriter(
                loop.checkpoint, model_dir, strategy, 2, asynchronous
            )
            for name, asynchronous in (("sync", False), ("async", True))
        }
        saved = [0]

        def save_then_step(name):
            saved[0] += 1
            blocking = _timed(lambda: writers[name].save(saved[0]))
            stepping = _timed(step)
            waiting = _timed(writers[name].sync)
            return blocking, stepping, waiting

        for _ in range(2):
            step()
            save_then_step("sync")
            save_then_step("async")
        times = {"step": [], "sync": [], "async": []}
        for _ in range(FLAGS.rounds):
            times["step"].append((0.0, _timed(step), 0.0))
            times["sync"].append(save_then_step("sync"))
            times["async"].append(save_then_step("async"))
    plain = statistics.median(t[1] for t in times["step"])
    results = dict(
        machine=machine.cpu_model(),
        argv=sys.argv,
        config=FLAGS.config,
        batch_size=config.run.batch_size,
        parameters=int(parts.model.count_params()),
        step_seconds=plain,
        variants={},
    )
    print(
        f"{'variant':8} {'save s':>8} {'step s':>8} {'wait s':>8} "
        f"{'total/step':>10}"
    )
    for name, rows in times.items():
        blocking, stepping, waiting = (
            statistics.median(row[i] for row in rows) for i in range(3)
        )
        total = blocking + stepping + waiting
        results["variants"][name] = dict(
            save_seconds=blocking,
            step_seconds=stepping,
            wait_seconds=waiting,
            ratio_to_step=total / plain,
        )
        print(
            f"{name:8} {blocking:8.3f} {stepping:8.3f} {waiting:8.3f} "
            f"{total / plain:10.2f}"
        )
    with tf.io.gfile.GFile(FLAGS.output, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    app.run(main)
