"""The cached linear probe: the appendix-B head trained to convergence.

The features of every image are computed once (`features.extract`), so
training the head costs seconds. The head is the appendix's: a
normalization without scale, then a linear layer on the mean-pooled
features. The normalization uses the training features' mean and
variance (what BatchNormalization's moving averages converge to), and
one softmax classifier per L2 strength of `--probe_l2` trains at once
(the strengths are a batch dimension) with Adam on the penalty
`l2 / 2 * sum(kernel ** 2)`, each keeping its best epoch on the
validation images, until none has improved for `--probe_patience` epochs
(at most `--probe_epochs`; both raised to cover `--probe_min_steps` and a
tenth of it in Adam steps, since a small label set is one step per epoch
and the first steps' validation accuracy is noisy). The strength with the
best validation accuracy wins and is tested once. Converged, it is
multinomial logistic regression with that penalty (tested against
scikit-learn).
"""

import keras
import numpy as np
import tensorflow as tf

from cpc_tf.training import preemption

_EPSILON = 1e-3  # BatchNormalization's default


def standardizer(features):
    """`(mean, variance)` float32 `[D]` of training features `[N, D]`."""
    features = np.asarray(features, np.float64)
    return (
        features.mean(axis=0).astype(np.float32),
        features.var(axis=0).astype(np.float32),
    )


class _Heads(tf.Module):
    """`L` softmax classifiers `[D] -> [C]`, one per L2 strength, with
    their Adam state, trained together."""

    def __init__(self, dim, classes, l2, learning_rate):
        super().__init__()
        count = len(l2)
        self.l2 = tf.constant(l2, tf.float32)
        self.learning_rate = learning_rate
        self.kernel = tf.Variable(tf.zeros([count, dim, classes]))
        self.bias = tf.Variable(tf.zeros([count, classes]))
        self.slots = [
            tf.Variable(tf.zeros_like(v))
            for v in (self.kernel, self.bias, self.kernel, self.bias)
        ]
        self.steps = tf.Variable(0.0)

    def logits(self, x):
        """`[B, D]` -> `[L, B, C]`."""
        return tf.einsum("bd,ldc->lbc", x, self.kernel) + self.bias[:, None]

    @tf.function(reduce_retracing=True)
    def train_epoch(self, x, y, order, batch_size):
        """One pass over `x` `[N, D]`, `y` `[N]` in `order`."""
        batches = (tf.shape(order)[0] + batch_size - 1) // batch_size
        for i in tf.range(batches):
            rows = order[i * batch_size : (i + 1) * batch_size]
            self._step(tf.gather(x, rows), tf.gather(y, rows))

    def _step(self, x, y):
        with tf.GradientTape() as tape:
            logits = self.logits(x)
            labels = tf.broadcast_to(y[None], tf.shape(logits)[:2])
            cross_entropy = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits),
                axis=1,
            )
            penalty = (
                self.l2
                / 2.0
                * tf.reduce_sum(tf.square(self.kernel), axis=[1, 2])
            )
            # Summed over the independent heads: each gets its own gradient.
            loss = tf.reduce_sum(cross_entropy + penalty)
        grads = tape.gradient(loss, [self.kernel, self.bias])
        self.steps.assign_add(1.0)
        beta1, beta2 = 0.9, 0.999
        correction = tf.sqrt(1.0 - beta2**self.steps) / (
            1.0 - beta1**self.steps
        )
        for variable, grad, first, second in zip(
            (self.kernel, self.bias), grads, self.slots[:2], self.slots[2:]
        ):
            first.assign(beta1 * first + (1.0 - beta1) * grad)
            second.assign(beta2 * second + (1.0 - beta2) * tf.square(grad))
            variable.assign_sub(
                self.learning_rate
                * correction
                * first
                / (tf.sqrt(second) + 1e-7)
            )

    @tf.function(reduce_retracing=True)
    def accuracy(self, x, y):
        """Top-1 of every head, `[L]`."""
        predicted = tf.argmax(self.logits(x), axis=-1, output_type=tf.int64)
        return tf.reduce_mean(
            tf.cast(tf.equal(predicted, y[None]), tf.float32), axis=1
        )


def train_probe(train, validation, num_classes, options, seed=0):
    """Chooses the L2 strength and epochs on `validation`.

    Args:
        train, validation: `(features [N, D], labels [N])` arrays.
        num_classes: number of classes.
        options: `configs.ProbeOptions` (`probe_l2`, `probe_epochs`,
            `probe_patience`, `probe_min_steps`, `probe_batch_size`,
            `probe_learning_rate`).
        seed: shuffling seed.

    Returns:
        `(model, record)`: a Keras head `[B, D]` features -> logits (the
        normalization and the chosen linear layer at its best epoch) and
        `{"l2", "epochs", "val_top1", "trials": [...]}`.
    """
    mean, variance = standardizer(train[0])

    def prepared(part):
        x = (np.asarray(part[0], np.float32) - mean) / np.sqrt(
            variance + _EPSILON
        )
        return tf.constant(x), tf.constant(np.asarray(part[1], np.int64))

    x, y = prepared(train)
    val_x, val_y = prepared(validation)
    l2 = [float(v) for v in options.probe_l2]
    heads = _Heads(x.shape[1], num_classes, l2, options.probe_learning_rate)
    best = np.full(len(l2), -1.0)
    best_epoch = np.zeros(len(l2), np.int64)
    best_weights = [heads.kernel.numpy(), heads.bias.numpy()]
    rng = np.random.default_rng(seed)
    batch = min(options.probe_batch_size, len(train[1]))
    steps_per_epoch = -(-len(train[1]) // batch)
    max_epochs = max(
        options.probe_epochs, -(-options.probe_min_steps // steps_per_epoch)
    )
    patience = max(
        options.probe_patience,
        -(-options.probe_min_steps // (10 * steps_per_epoch)),
    )
    batch = tf.constant(batch)
    for epoch in range(1, max_epochs + 1):
        preemption.check()
        heads.train_epoch(
            x, y, tf.constant(rng.permutation(len(train[1]))), batch
        )
        accuracy = heads.accuracy(val_x, val_y).numpy()
        better = accuracy > best
        if better.any():
            kernel, bias = heads.kernel.numpy(), heads.bias.numpy()
            best_weights[0][better] = kernel[better]
            best_weights[1][better] = bias[better]
            best[better] = accuracy[better]
            best_epoch[better] = epoch
        if epoch - best_epoch.max() >= patience:
            break
    chosen = int(np.argmax(best))
    trials = [
        dict(l2=value, val_top1=float(b), epochs=int(e))
        for value, b, e in zip(l2, best, best_epoch)
    ]
    model = _keras_head(
        mean, variance, best_weights[0][chosen], best_weights[1][chosen]
    )
    return model, dict(trials[chosen], trials=trials, epochs_run=epoch)


def _keras_head(mean, variance, kernel, bias):
    """The chosen head as a Keras model: features `[B, D]` -> logits."""
    inputs = keras.Input((len(mean),), name="features")
    x = keras.layers.Normalization(
        mean=mean, variance=variance + _EPSILON, name="norm"
    )(inputs)
    dense = keras.layers.Dense(kernel.shape[1], name="logits", dtype="float32")
    logits = dense(x)
    dense.set_weights([kernel, bias])
    return keras.Model(inputs, logits, name="probe")


def top1(model, features, labels):
    """Top-1 accuracy of a probe on `(features, labels)`."""
    logits = model.predict(features, batch_size=4096, verbose=0)
    return float(np.mean(np.argmax(logits, axis=1) == np.asarray(labels)))
