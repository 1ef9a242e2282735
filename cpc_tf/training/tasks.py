"""Training tasks for the shared trainer: the CPC objective."""

import tensorflow as tf

from cpc_tf.training import distribute, steps


class CPCTask(steps.Task):
    """The CPC objective summed over directions; `negatives` local/global.

    With global negatives every replica computes the global loss: its
    targets and predictions are gathered from all replicas in one
    collective (`distribute.gather_batch`).
    """

    def __init__(self, model, optimizer, negatives="local"):
        self.model = model
        self.optimizer = optimizer
        self.negatives = negatives
        self.global_loss = negatives == "global"
        self._forward = self._local_outputs
        self._losses = self.model.cpc_losses

    def compile_around_collectives(self):
        """XLA-compiles the pieces between collectives (`--jit_compile`).

        With global negatives the gather sits between the forward pass and
        the loss, and TF cannot compile a CPU collective into an XLA
        cluster: the encoder and heads, then the loss, are compiled
        separately (their gradients too). Returns False when there is no
        collective in the step (local negatives), so the trainer compiles
        the whole forward and backward pass instead.
        """
        if not self.global_loss:
            return False
        self._forward = tf.function(self._local_outputs, jit_compile=True)
        self._losses = tf.function(self.model.cpc_losses, jit_compile=True)
        return True

    def _local_outputs(self, patches, training):
        latents = self.model.encoder(patches, training=training)
        targets, preds = self.model.cpc_outputs(latents)
        return self.model.flat_outputs(targets, preds)

    def compute(self, batch, training):
        patches = batch[0] if isinstance(batch, (tuple, list)) else batch
        flat = self._forward(patches, training)
        if self.global_loss:
            flat = distribute.gather_batch(flat)
        terms = self._losses(*self.model.unflatten_outputs(flat))
        return self.model.total_loss(terms), terms

    def optimizer_groups(self):
        return [
            steps.OptimizerGroup(self.optimizer, self.model.trainable_variables)
        ]
