"""Probes on features computed once: the converged linear probe and k-NN.

`embed` runs the frozen encoder (or, for the raw-pixel floor, a flatten of
the centre-cropped images) once over the labelled training images, their
augmented views (`--probe_views`), the validation and the test images.
`score` then trains the appendix-B head to convergence on them
(`probe.train_probe`, L2 and epochs chosen on validation) or runs the
weighted k-NN classifier, and tests once.
"""

import keras
import numpy as np

from cpc_tf.config import HOLDOUT, flag_error
from cpc_tf.evaluation import feature_cache, features, knn, probe
from cpc_tf.training import preemption

_VIEW_SALT = 7


def pixel_encoder(image_shape):
    """The raw-pixel 'encoder': images `[B, S, S, 3]` -> `[B, S * S * 3]`."""
    inputs = keras.Input(tuple(image_shape), name="images")
    return keras.Model(inputs, keras.layers.Flatten()(inputs), name="pixels")


def embed(
    strategy,
    encoder,
    inputs,
    view_inputs,
    split,
    options,
    seed,
    cache=None,
):
    """Features of every part of `split`.

    Args:
        cache: `(directory, encoder key, write)` to read or write whole
            sources' features (`feature_cache`), or None to embed only the
            images needed.

    Returns:
        A dict of `(features, labels)`: `train` (plus `--probe_views`
        augmented views, never cached), `validation` (None without one)
        and `test`.
    """
    data = inputs.data
    batch = options.eval_batch_size or 256

    def eval_fn(spec, ids):
        return inputs.eval_fn(spec, batch, ids)

    def part(spec, ids):
        preemption.check()
        if cache is None:
            return features.extract(strategy, encoder, eval_fn(spec, ids))
        directory, key, write = cache
        path = feature_cache.cache_path(directory, key, spec, data)
        whole = feature_cache.source_features(
            strategy, encoder, eval_fn, spec, data, path, write
        )
        return feature_cache.select(whole, ids)

    train = part(data.train_data, split.train_ids)
    for view in range(options.probe_views):
        extra = features.extract(
            strategy,
            encoder,
            view_inputs.view_fn(
                batch, split.train_ids, seed * 1000 + _VIEW_SALT + view
            ),
        )
        train = tuple(np.concatenate(pair) for pair in zip(train, extra))
    validation = None
    if split.val_ids is not None:
        validation = part(data.train_data, split.val_ids)
    if data.eval_data == HOLDOUT:
        test = part(data.train_data, split.test_ids)
    else:
        test = part(data.eval_data, None)
    return dict(train=train, validation=validation, test=test)


def _top_k(logits, labels, k):
    k = min(k, logits.shape[1])
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    labels = np.asarray(labels)
    return float(np.mean(top[:, 0] == labels)), float(
        np.mean((top == labels[:, None]).any(axis=1))
    )


def score(kind, embedded, num_classes, options, knn_config, seed):
    """Trains/tests the probe; returns `(head or None, results entries)`.

    Args:
        kind: "cached" or "knn".
        embedded: the dict of `embed`.
        num_classes: classes of the training source.
        options: the `ProbeOptions`.
        knn_config: the `KnnConfig` (k, temperature).
        seed: the run's seed.
    """
    train, validation, test = (
        embedded["train"],
        embedded["validation"],
        embedded["test"],
    )
    knn_kwargs = dict(
        k=knn_config.knn_k, temperature=knn_config.knn_temperature
    )
    if kind == "knn":
        top1 = knn.knn_top1(*train, *test, num_classes, **knn_kwargs)
        val = (
            None
            if validation is None
            else knn.knn_top1(*train, *validation, num_classes, **knn_kwargs)
        )
        return None, dict(
            top1=top1,
            top5=None,
            test=dict(top1=top1, top5=None, examples=len(test[1])),
            validation=None
            if val is None
            else dict(top1=val, examples=len(validation[1])),
            probe=dict(kind="knn", memory=len(train[1]), **knn_kwargs),
        )
    if validation is None:
        flag_error(
            "probe",
            "cached chooses its L2 strength and epochs on validation "
            "images: set --holdout, or --validation with "
            "--eval_data=holdout.",
        )
    head, record = probe.train_probe(
        train, validation, num_classes, options, seed
    )
    logits = head.predict(test[0], batch_size=4096, verbose=0)
    top1, top5 = _top_k(logits, test[1], 5)
    return head, dict(
        top1=top1,
        top5=top5,
        test=dict(top1=top1, top5=top5, examples=len(test[1])),
        validation=dict(top1=record["val_top1"], examples=len(validation[1])),
        probe=dict(kind="cached", train_rows=len(train[1]), **record),
    )


def whole_classifier(encoder, head, input_shape):
    """inputs -> encoder -> mean over the grid -> head: a `.keras`
    classifier that serves like the streamed probe's."""
    inputs = keras.Input(tuple(input_shape), name="inputs")
    x = encoder(inputs)
    if len(x.shape) > 2:
        x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, head(x), name="cached_linear_classifier")
