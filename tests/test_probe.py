"""The cached probe against scikit-learn's logistic regression."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from cpc_tf.data import readers, sources
from cpc_tf.evaluation import ProbeOptions, probe


def mnist_pixels():
    """Fixed features: mnist5k pixels in [0, 1], 3,500/500/1,000 split."""
    train = sources.source_labels("mnist5k:train")
    images, labels = readers.mnist5k_arrays()
    ids = readers.mnist5k_split_ids()
    pixels = images.reshape(len(images), -1).astype("float32") / 255.0
    del train
    rng = np.random.default_rng(0)
    order = rng.permutation(ids["train"])
    parts = dict(train=order[:3500], validation=order[3500:], test=ids["test"])
    return {k: (pixels[v], labels[v]) for k, v in parts.items()}


@pytest.mark.slow
def test_cached_probe_matches_sklearn_logistic_regression():
    data = mnist_pixels()
    l2_values = (1e-4, 1e-3, 1e-2, 1e-1)
    options = ProbeOptions(
        pretrained_dir="unused",
        probe="cached",
        probe_l2=l2_values,
        probe_epochs=300,
        probe_patience=20,
    )
    model, record = probe.train_probe(
        data["train"], data["validation"], 10, options, seed=0
    )
    ours = probe.top1(model, *data["test"])
    # The same objective in scikit-learn (L-BFGS to convergence): mean
    # cross-entropy + l2 / 2 * |W|^2 is C = 1 / (l2 * N); same features
    # standardised as the probe's normalization does; C chosen on the
    # same validation images.
    mean, variance = probe.standardizer(data["train"][0])
    scale = np.sqrt(variance + probe._EPSILON)

    def standard(x):
        return (x - mean) / scale

    count = len(data["train"][1])
    best = None
    for l2 in l2_values:
        reference = LogisticRegression(C=1.0 / (l2 * count), max_iter=3000)
        reference.fit(standard(data["train"][0]), data["train"][1])
        score = reference.score(
            standard(data["validation"][0]), data["validation"][1]
        )
        if best is None or score > best[0]:
            best = (score, reference)
    theirs = best[1].score(standard(data["test"][0]), data["test"][1])
    assert abs(ours - theirs) <= 0.01, (ours, theirs, record)
    assert ours > 0.85
    assert record["l2"] in l2_values and record["epochs"] >= 1
    assert len(record["trials"]) == len(l2_values)


@pytest.mark.parametrize("min_steps, epochs_run", [(0, 3), (100, 11)])
def test_small_label_sets_get_patience_in_steps(min_steps, epochs_run):
    # 40 rows make one Adam step per epoch. The one validation image is
    # right after the first step and can never improve: the run stops
    # `patience` epochs later, patience raised to a tenth of min_steps.
    rng = np.random.default_rng(0)
    labels = np.arange(40) % 2
    features = rng.normal(size=(40, 4)).astype("float32")
    features[:, 0] += 10.0 * (2 * labels - 1)
    validation = (np.array([[-10.0, 0, 0, 0]], "float32"), np.array([0]))
    options = ProbeOptions(
        pretrained_dir="unused",
        probe="cached",
        probe_l2=(0.0,),
        probe_epochs=10,
        probe_patience=2,
        probe_min_steps=min_steps,
    )
    _, record = probe.train_probe((features, labels), validation, 2, options)
    assert record["val_top1"] == 1.0 and record["epochs"] == 1
    assert record["epochs_run"] == epochs_run
