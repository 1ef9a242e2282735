"""The paper's training step under Keras `fit` (TensorFlow backend).

`CPCPretrainer(cpc)` wraps a `models.cpc.CPC` as a KerasHub task wraps its
backbone: `compile(optimizer, clip_global_norm=0.01, ema_decay=0.9999,
negatives="local")`, then `fit(patch_grids)` runs the trainer's own
replicated step (`steps.replica_step`) under any `tf.distribute`
strategy on one host (TPUs included): one all-reduce, the clip of the
gradient summed over replicas, the update and the Polyak average, exactly
as `cpc_tf.pretrain` does (tested equal). Under
`MultiWorkerMirroredStrategy` `compile` refuses and names the `Trainer`.
`pretrainer.polyak.swapped()` puts the averages into the weights. The
CPC model alone trains with plain `compile`/`fit` too (Keras's step, any
backend), without the summed clip and the average.
"""

import keras
import tensorflow as tf

from cpc_tf.training import distribute, steps
from cpc_tf.training.tasks import CPCTask


@keras.saving.register_keras_serializable(package="cpc_tf")
class CPCPretrainer(keras.Model):
    """`fit` for a built `CPC` model with the paper's step.

    Args:
        cpc: a built `models.cpc.CPC` (its variables are this model's).

    Reports `loss`, `grad_norm`, `loss_<direction>` and
    `accuracy_<direction>`.
    """

    def __init__(self, cpc, **kwargs):
        super().__init__(**kwargs)
        self.cpc = cpc
        self.clip_global_norm = 0.0
        self.negatives = "local"
        self.microbatches = 1
        self.polyak = None
        self.built = cpc.built

    def build(self, input_shape):
        self.cpc.build(input_shape)
        self.built = True

    def call(self, patches, training=None):
        return self.cpc(patches, training=training)

    def compile(
        self,
        optimizer="adam",
        clip_global_norm=0.0,
        ema_decay=0.0,
        negatives="local",
        microbatches=1,
        **kwargs,
    ):
        """Keras `compile` with the paper's training options.

        Args:
            optimizer: a Keras optimizer (or its name).
            clip_global_norm: clip the global norm of the gradient summed
                over replicas (the paper: 0.01; 0 = off).
            ema_decay: Polyak averaging of the weights with warm-up (the
                paper: 0.9999; 0 = off).
            negatives: "local" (this replica's batch) or "global" (every
                replica's targets).
            microbatches: encode each replica's batch in this many slices
                (exact: `tasks.CPCTask`).
            **kwargs: for `keras.Model.compile` (e.g. `steps_per_execution`).
        """
        if negatives not in ("local", "global"):
            raise ValueError(
                f"negatives: expected local or global, got {negatives!r}."
            )
        strategy = self.distribute_strategy
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            raise ValueError(
                "CPCPretrainer.fit is not supported under "
                "MultiWorkerMirroredStrategy (never run on several workers: "
                "how Keras shards the data between them is untested here). "
                "Train with cpc_tf.training.trainer.Trainer, as "
                "`python -m cpc_tf.pretrain --strategy=multi_worker` does: "
                "it is tested on loopback workers."
            )
        super().compile(optimizer=optimizer, **kwargs)
        self.clip_global_norm = clip_global_norm
        self.negatives = negatives
        self.microbatches = microbatches
        self.polyak = None
        if ema_decay:
            self.polyak = steps.PolyakAverage(
                self.trainable_variables, ema_decay
            )
        distribute.skip_gradient_aggregation(self.optimizer)
        self.optimizer.build(self.trainable_variables)

    def train_step(self, data):
        """The trainer's step, in replica context; the running metrics."""
        task = CPCTask(
            self.cpc, self.optimizer, self.negatives, self.microbatches
        )
        loss, terms, norm, _, _ = steps.replica_step(
            task,
            task.optimizer_groups(),
            data,
            clip_norm=self.clip_global_norm,
            ema=self.polyak,
        )
        self._loss_tracker.update_state(loss)
        for name, tracker in self.cpc.trackers.items():
            tracker.update_state(terms[name])
        return dict(self.get_metrics_result(), grad_norm=norm)

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        return self.cpc.compute_loss(y_pred=y_pred, training=training)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        for name, tracker in self.cpc.trackers.items():
            tracker.update_state(y_pred[name])
        return self.get_metrics_result()

    @property
    def metrics(self):
        return super().metrics + list(self.cpc.trackers.values())

    def get_config(self):
        config = super().get_config()
        config.update(cpc=keras.saving.serialize_keras_object(self.cpc))
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["cpc"] = keras.saving.deserialize_keras_object(config["cpc"])
        return cls(**config)
