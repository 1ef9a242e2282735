"""Embedding a dataset once with a frozen encoder (cached probes, k-NN).

`extract` runs the encoder over one pass of a dataset under the strategy
and gathers the spatially mean-pooled features of every replica and worker
on the host: the appendix-B head is affine per grid position, so its
logits are a linear function of the pooled features. SIGTERM stops it at
the next batch (`preemption.Preempted`: nothing to save).
"""

import numpy as np
import tensorflow as tf

from cpc_tf.training import preemption


def pooled(features):
    """`[B, ..., D]` -> float32 `[B, D]`: the mean over the middle axes."""
    features = tf.cast(features, tf.float32)
    rank = len(features.shape)
    if rank > 2:
        features = tf.reduce_mean(features, axis=list(range(1, rank - 1)))
    return features


def extract(strategy, encoder, dataset_fn):
    """`(features float32 [N, D], labels int64 [N])` of one dataset pass.

    Args:
        strategy: the strategy `encoder` was built under.
        encoder: a Keras model or layer, inputs -> features `[B, ..., D]`;
            called with `training=False`.
        dataset_fn: `InputContext -> Dataset` of one pass of per-replica
            `(inputs, labels)` batches; partial batches are fine.
    """
    dataset = strategy.distribute_datasets_from_function(dataset_fn)

    def replica_fn(batch):
        inputs, labels = batch
        return pooled(encoder(inputs, training=False)), tf.cast(
            labels, tf.int64
        )

    @tf.function(reduce_retracing=True)
    def step(batch):
        features, labels = strategy.run(replica_fn, args=(batch,))
        return strategy.gather(features, axis=0), strategy.gather(
            labels, axis=0
        )

    chunks, labels = [], []
    for batch in dataset:
        preemption.check()
        features, batch_labels = step(batch)
        chunks.append(features.numpy())
        labels.append(batch_labels.numpy())
    if not chunks:
        raise ValueError("The dataset to embed is empty.")
    return np.concatenate(chunks), np.concatenate(labels)


def flat_pixels(images):
    """Images `[B, ...]` -> `[B, prod(...)]`: the raw-pixel baseline's
    features."""
    return tf.reshape(tf.cast(images, tf.float32), [tf.shape(images)[0], -1])
