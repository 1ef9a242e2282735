"""Training tasks for the shared trainer: the CPC objective.

`CPCTask(..., microbatches=K)` computes the step's gradient exactly in K
micro-batches per replica, for a batch whose encoder activations do not
fit in memory at once: (a) the K slices of the replica's patch grids are
encoded one after another without a tape (the latents `[B, gh, gw, D]`
are small next to the encoder's activations); (b) the context networks,
predictors and InfoNCE run on the whole replica batch's latents with the
same negatives as without micro-batches (the replica's patches, or every
replica's with global negatives), and give the gradient of the loss with
respect to the latents and to the head's weights; (c) each slice is
encoded again under a tape and its slice of the latent gradient is
back-propagated into the encoder's weights, summed over the slices. This
is the gradient of the whole batch, not an accumulation of K smaller
batches' gradients, because the encoder treats every image on its own
(layer normalisation, no batch statistics): a batch-normalised encoder is
refused. Each encode waits for the one before (a data dependence), so at
most one slice's activations are alive at a time. The all-reduce, clip,
update and Polyak average that follow are the step's, unchanged.
"""

import keras
import tensorflow as tf

from cpc_tf.training import distribute, steps


class CPCTask(steps.Task):
    """The CPC objective summed over directions; `negatives` local/global;
    `microbatches` slices of each replica's batch (see the module)."""

    def __init__(self, model, optimizer, negatives="local", microbatches=1):
        if microbatches < 1:
            raise ValueError(f"microbatches must be >= 1, got {microbatches}.")
        if microbatches > 1 and _has_batch_statistics(model.encoder):
            raise ValueError(
                "microbatches > 1 needs an encoder without batch "
                "statistics (norm=layer, group or none): batch "
                "normalisation makes every image's features depend on its "
                "micro-batch."
            )
        self.model = model
        self.optimizer = optimizer
        self.negatives = negatives
        self.microbatches = microbatches
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
        return self._head_outputs(latents)

    def _head_outputs(self, latents):
        targets, preds = self.model.cpc_outputs(latents)
        return self.model.flat_outputs(targets, preds)

    def _loss(self, flat):
        if self.global_loss:
            flat = distribute.gather_batch(flat)
        terms = self._losses(*self.model.unflatten_outputs(flat))
        return self.model.total_loss(terms), terms

    def compute(self, batch, training):
        return self._loss(self._forward(_patches(batch), training))

    def optimizer_groups(self):
        return [
            steps.OptimizerGroup(self.optimizer, self.model.trainable_variables)
        ]

    def gradients(self, groups, batch, loss_scale=None):
        if self.microbatches == 1:
            return super().gradients(groups, batch, loss_scale)
        return self._microbatch_gradients(groups, _patches(batch), loss_scale)

    def _microbatch_gradients(self, groups, patches, loss_scale):
        """`(grads, loss, metrics)` of the whole replica batch, the
        encoder run on `self.microbatches` slices (see the module)."""
        encoder = self.model.encoder
        slices = tf.split(patches, self.microbatches, axis=0)
        latents, previous = [], None
        for piece in slices:
            piece = _after(piece, previous)
            previous = tf.stop_gradient(encoder(piece, training=True))
            latents.append(previous)
        latents = tf.concat(latents, axis=0)
        encoder_ids = {id(v) for v in encoder.trainable_variables}
        variables = [v for g in groups for v in g.variables]
        head = [v for v in variables if id(v) not in encoder_ids]
        with tf.GradientTape() as tape:
            tape.watch(latents)
            loss, terms = self._loss(self._head_outputs(latents))
            share = steps.loss_share(self, loss, loss_scale)
        latent_grad, *head_grads = tape.gradient(share, [latents, *head])
        encoder_vars = [v for v in variables if id(v) in encoder_ids]
        encoder_grads, previous = None, latents
        for piece, grad in zip(
            slices, tf.split(latent_grad, self.microbatches, axis=0)
        ):
            with tf.GradientTape() as tape:
                output = encoder(_after(piece, previous), training=True)
            pieces = tape.gradient(
                output,
                encoder_vars,
                output_gradients=tf.cast(grad, output.dtype),
            )
            encoder_grads = (
                pieces
                if encoder_grads is None
                else [a + b for a, b in zip(encoder_grads, pieces)]
            )
            previous = encoder_grads
        by_id = dict(zip(map(id, head), head_grads))
        by_id.update(zip(map(id, encoder_vars), encoder_grads))
        return [by_id[id(v)] for v in variables], loss, terms


def _patches(batch):
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def _after(tensor, previous):
    """`tensor`, computed only once `previous` (tensors) is."""
    if previous is None:
        return tensor
    waits = [t for t in tf.nest.flatten(previous) if t is not None]
    with tf.control_dependencies(waits):
        return tf.identity(tensor)


def _has_batch_statistics(encoder):
    return any(
        isinstance(layer, keras.layers.BatchNormalization)
        for layer in encoder.backbone.layers
    )
