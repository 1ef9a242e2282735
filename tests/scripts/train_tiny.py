"""Trains a tiny CPC model a few steps with the shared trainer.

Used by tests/test_distribute.py as one worker of a multi-worker run (with
TF_CONFIG set) or as the single-process reference. Writes the final
weights to `<out>/weights.npz`.

Usage: python train_tiny.py OUT_DIR STRATEGY
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from cpc_tf import distribute, encoders, trainer  # noqa: E402
from cpc_tf.model import build_cpc  # noqa: E402
from cpc_tf.tasks import CPCTask  # noqa: E402

GLOBAL_BATCH = 4
STEPS = 3


def main(out_dir, strategy_name):
    strategy = distribute.make_strategy(strategy_name)
    keras.utils.set_random_seed(0)
    with strategy.scope():
        backbone = encoders.resnet_v2(
            blocks=(1,),
            widths=(4,),
            output_widths=(8,),
            stem_width=4,
            stem_kernel=3,
            stem_stride=2,
            stem_pool=False,
        )
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
    data = rng.uniform(-1, 1, size=(STEPS * GLOBAL_BATCH, 4, 4, 8, 8, 3))
    data = data.astype("float32")

    def dataset_fn(context):
        per_replica = context.get_per_replica_batch_size(GLOBAL_BATCH)
        batches = data.reshape(STEPS, GLOBAL_BATCH, 4, 4, 8, 8, 3)
        start = context.input_pipeline_id * per_replica
        mine = batches[:, start : start + per_replica]
        return tf.data.Dataset.from_tensor_slices(mine)

    loop = trainer.Trainer(
        strategy,
        task,
        trainer.TrainerOptions(
            model_dir=out_dir,
            steps=STEPS,
            clip_global_norm=0.01,
            ema_decay=0.9999,
            verbose=False,
        ),
    )
    result = loop.fit(dataset_fn)
    np.savez(
        os.path.join(out_dir, "weights.npz"),
        *[v.numpy() for v in model.trainable_variables],
    )
    print("done", result["steps"], result["last_loss"], flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
