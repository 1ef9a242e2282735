"""Trains a tiny CPC model a few steps with the shared trainer.

Used by tests/test_distribute.py as one worker of a multi-worker run (with
TF_CONFIG set; the workers share MODEL_DIR, only the chief writes it) or
as the single-process reference. Batch `i` is a fixed function of the
step, so a resumed run sees what an uninterrupted one sees. Writes the
final weights to WEIGHTS (a `.npz`).

With `--pause`, every worker waits at step 5 (after writing
`MODEL_DIR/paused_<task>`) until `MODEL_DIR/go` exists or it got SIGTERM:
a test can then preempt one worker at a known step.

With `--steps=N` it trains to step N (of the same 12 batches) and with
`--checkpoint_every=N` saves every N steps (default: only at the end);
`--steps_per_loop=N` runs N steps per compiled call.

With `--signal_at=K`, worker 1 (or the single process) sends itself
SIGTERM when its input pipeline produces batch K, after writing the steps
done then to `MODEL_DIR/signalled_at`, and lets that batch go only once
the trainer's stop flag is up.

Usage: python train_tiny.py MODEL_DIR WEIGHTS STRATEGY [--pause]
    [--steps=N] [--checkpoint_every=N] [--steps_per_loop=N]
    [--signal_at=K]
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from helpers import TINY_BACKBONE, signalling_batches  # noqa: E402

from cpc_tf.models import encoders
from cpc_tf.models.cpc import build_cpc  # noqa: E402
from cpc_tf.training import distribute, preemption, trainer  # noqa: E402
from cpc_tf.training.tasks import CPCTask  # noqa: E402

GLOBAL_BATCH = 4
STEPS = 12
PAUSE_AT = 5


def pause_hook(model_dir, task_name):
    def pause(step):
        if step != PAUSE_AT:
            return {}
        open(os.path.join(model_dir, f"paused_{task_name}"), "w").close()
        go = os.path.join(model_dir, "go")
        while not (os.path.exists(go) or preemption.requested()):
            time.sleep(0.05)
        return {}

    return trainer.Hook(PAUSE_AT, pause, at_end=False)


def main(
    model_dir,
    weights_path,
    strategy_name,
    pause,
    steps,
    every,
    steps_per_loop=1,
    signal_batch=-1,
):
    preemption.install()
    strategy = distribute.make_strategy(strategy_name)
    keras.utils.set_random_seed(0)
    with strategy.scope():
        backbone = encoders.resnet_v2(**TINY_BACKBONE)
        model = build_cpc(
            backbone,
            (8, 8, 3),
            (4, 4),
            directions=("down", "left"),
            steps_to_ignore=1,
            steps_to_predict=2,
            context_blocks=1,
            context_hidden=8,
            target_dim=8,
        )
        task = CPCTask(model, keras.optimizers.SGD(0.5), "global")
    rng = np.random.default_rng(0)
    data = rng.uniform(-1, 1, size=(STEPS, GLOBAL_BATCH, 4, 4, 8, 8, 3))
    data = data.astype("float32")
    loop = trainer.Trainer(
        strategy,
        task,
        trainer.TrainerOptions(
            model_dir=model_dir,
            steps=steps,
            clip_global_norm=0.01,
            ema_decay=0.9999,
            checkpoint_every=every,
            steps_per_loop=steps_per_loop,
            verbose=False,
        ),
    )
    task_type, task_id = distribute.cluster_task(strategy)[:2]
    signalled = signal_batch >= 0 and (task_type is None or task_id == 1)

    def record(step):
        with open(os.path.join(model_dir, "signalled_at"), "w") as f:
            f.write(str(step))

    def dataset_fn(context):
        per_replica = context.get_per_replica_batch_size(GLOBAL_BATCH)
        start = context.input_pipeline_id * per_replica
        mine = data[:, start : start + per_replica]
        first = int(loop.step.numpy())
        dataset = tf.data.Dataset.from_tensor_slices(mine).skip(first)
        if signalled:
            return signalling_batches(dataset, loop, signal_batch, record)
        return dataset

    task_name = (task_type or "single") + str(task_id)
    hooks = [pause_hook(model_dir, task_name)] if pause else []
    result = loop.fit(dataset_fn, hooks)
    if result["stopped_early"]:
        print("preempted at step", result["steps"], flush=True)
        return
    weights = [v.numpy() for v in model.trainable_variables]
    weights += [v.numpy() for v in loop.ema.averages]
    np.savez(weights_path, *weights)
    print("done", result["steps"], result["last_loss"], flush=True)


def option(name, default):
    for arg in sys.argv[4:]:
        if arg.startswith(f"--{name}="):
            return int(arg.split("=", 1)[1])
    return default


if __name__ == "__main__":
    main(
        sys.argv[1],
        sys.argv[2],
        sys.argv[3],
        "--pause" in sys.argv[4:],
        option("steps", STEPS),
        option("checkpoint_every", 100),
        option("steps_per_loop", 1),
        option("signal_at", -1),
    )
