"""Heads (appendices B and C) and the classification task.

- `linear_head` (appendix B): BatchNormalization without scale, a 1x1
  convolution to per-position logits, the spatial mean of the logits.
- `classifier_head` (appendix C): optional residual bottleneck blocks, the
  global mean pool, dropout and a linear layer.
- `ClassifierTask`: softmax cross-entropy for the shared `trainer.Trainer`
  with a frozen or trained encoder, one or two optimizers and the L2
  penalty on kernels (`l2_penalty`).
"""

import keras
import tensorflow as tf
from keras import layers

from cpc_tf.models import encoders
from cpc_tf.training import steps


def linear_head(feature_shape, num_classes, name="linear_head", l2=0.0):
    """Appendix B: `[B, g, g, D]` (or `[B, D]`) features -> logits `[B, C]`.

    BatchNormalization without the scale parameter, a 1x1 convolution (a
    Dense layer on the last axis) to per-position logits, then the spatial
    mean of the logits. On mean-pooled features `[B, D]` (the cached
    probe) the mean is the identity: the same function of the grid, since
    normalization and the convolution are affine per position. `l2` adds
    the penalty `l2 / 2 * sum(kernel ** 2)` to the model's losses.
    """
    inputs = keras.Input(tuple(feature_shape), name="features")
    x = layers.BatchNormalization(center=True, scale=False, name="norm")(inputs)
    regularizer = keras.regularizers.L2(l2 / 2.0) if l2 else None
    logits = layers.Dense(
        num_classes,
        name="logits",
        dtype="float32",
        kernel_regularizer=regularizer,
    )(x)
    if len(feature_shape) == 3:
        logits = layers.GlobalAveragePooling2D(name="mean", dtype="float32")(
            logits
        )
    return keras.Model(inputs, logits, name=name)


def classifier_head(
    feature_shape,
    num_classes,
    dropout=0.0,
    blocks=0,
    hidden=4096,
    bottleneck=1024,
    name="classifier_head",
):
    """Appendix C: `[B, h, w, D]` features -> `[B, num_classes]` logits.

    `blocks` pre-activation bottleneck blocks (batch normalization; width
    `hidden`, inner width `bottleneck`; the first projects D to `hidden`)
    and a final normalization and ReLU, then the spatial mean, dropout and
    a linear layer. With `blocks=0` it is the ResNet classifier: mean pool,
    dropout, linear.
    """
    inputs = keras.Input(tuple(feature_shape), name="features")
    x = inputs
    for index in range(blocks):
        x = encoders._bottleneck(
            x, bottleneck, hidden, 1, "batch", f"head_block{index + 1}", None
        )
    if blocks:
        x = encoders._preact(x, "batch", "head_post", None)
    x = layers.GlobalAveragePooling2D(name="mean")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(num_classes, name="logits", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=name)


def classifier(encoder, head, input_shape, name="classifier"):
    """The whole model: inputs -> `encoder` -> `head` -> logits `[B, C]`."""
    inputs = keras.Input(tuple(input_shape), name="inputs")
    return keras.Model(inputs, head(encoder(inputs)), name=name)


def decayed(variables):
    """The kernels among `variables`: convolution and dense weights, not
    normalization scales and offsets, nor biases."""
    return [v for v in variables if v.name == "kernel"]


def l2_penalty(variables, strength):
    """`strength / 2 * sum(kernel ** 2)` over the kernels of `variables`
    (float32 scalar; its gradient is `strength * kernel`)."""
    kernels = decayed(variables)
    if not strength or not kernels:
        return tf.zeros((), tf.float32)
    total = tf.add_n(
        [tf.nn.l2_loss(tf.cast(steps._value(v), tf.float32)) for v in kernels]
    )
    return strength * total


class ClassifierTask(steps.Task):
    """Softmax cross-entropy of `head(encoder(inputs))`.

    Args:
        model: `classifier(encoder, head, ...)`, what is checkpointed.
        encoder, head: its two parts.
        optimizer: updates the head, and the encoder too when
            `train_encoder` and no `encoder_optimizer` is given.
        train_encoder: False freezes the encoder (`trainable=False`, run
            in inference mode).
        encoder_optimizer: a second optimizer for the encoder alone.
        l2: L2 penalty strength on the kernels `optimizer` updates (the
            encoder's, under `encoder_optimizer`, are not penalised).
    """

    def __init__(
        self,
        model,
        encoder,
        head,
        optimizer,
        train_encoder=False,
        encoder_optimizer=None,
        l2=0.0,
    ):
        if encoder_optimizer is not None and not train_encoder:
            raise ValueError("An encoder optimizer needs train_encoder.")
        self.model = model
        self.encoder = encoder
        self.head = head
        self.optimizer = optimizer
        self.encoder_optimizer = encoder_optimizer
        self.train_encoder = train_encoder
        self.l2 = l2
        encoder.trainable = train_encoder

    def compute(self, batch, training):
        inputs, labels = batch
        features = self.encoder(
            inputs, training=training and self.train_encoder
        )
        logits = tf.cast(self.head(features, training=training), tf.float32)
        loss = tf.reduce_mean(
            keras.losses.sparse_categorical_crossentropy(
                labels, logits, from_logits=True
            )
        )
        correct = tf.equal(tf.argmax(logits, -1), tf.cast(labels, tf.int64))
        metrics = {
            "top1": tf.reduce_mean(tf.cast(correct, tf.float32)),
            "cross_entropy": loss,
        }
        penalty = l2_penalty(self.optimizer_groups()[0].variables, self.l2)
        return loss + penalty, metrics

    def optimizer_groups(self):
        if self.encoder_optimizer is None:
            return [
                steps.OptimizerGroup(
                    self.optimizer, self.model.trainable_variables
                )
            ]
        return [
            steps.OptimizerGroup(self.optimizer, self.head.trainable_variables),
            steps.OptimizerGroup(
                self.encoder_optimizer, self.encoder.trainable_variables
            ),
        ]
