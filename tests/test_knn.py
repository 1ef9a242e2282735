"""The weighted k-NN classifier (Wu et al. 2018) and the monitor's plan."""

import numpy as np

from cpc_tf.config import DataConfig, KnnConfig
from cpc_tf.evaluation import knn, monitor


def reference_knn(memory, labels, queries, classes, k, temperature):
    """The rule, one query at a time: cosine similarities, the k largest
    vote with exp(similarity / temperature), the heaviest class wins."""
    memory = memory / np.linalg.norm(memory, axis=1, keepdims=True)
    predictions = []
    for query in queries:
        similarity = memory @ (query / np.linalg.norm(query))
        nearest = np.argsort(-similarity)[:k]
        votes = np.zeros(classes)
        for index in nearest:
            votes[labels[index]] += np.exp(similarity[index] / temperature)
        predictions.append(int(np.argmax(votes)))
    return np.array(predictions)


def test_knn_matches_the_rule():
    rng = np.random.default_rng(0)
    memory = rng.normal(size=(300, 16))
    labels = rng.integers(0, 5, 300)
    queries = rng.normal(size=(40, 16))
    for k, temperature in ((1, 0.07), (7, 0.5), (200, 0.07), (500, 1.0)):
        expected = reference_knn(
            memory, labels, queries, 5, min(k, 300), temperature
        )
        got = knn.knn_predict(
            memory, labels, queries, 5, k=k, temperature=temperature, chunk=16
        )
        np.testing.assert_array_equal(got, expected)


def test_knn_separates_clusters():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(3, 8)) * 5
    labels = rng.integers(0, 3, 200)
    memory = centres[labels] + rng.normal(size=(200, 8))
    query_labels = rng.integers(0, 3, 50)
    queries = centres[query_labels] + rng.normal(size=(50, 8))
    assert knn.knn_top1(memory, labels, queries, query_labels, 3, k=20) > 0.9


def test_monitor_plan_memory_and_queries():
    holdout = np.arange(0, 4000, 10)
    rest = np.setdiff1d(np.arange(4000), holdout)
    memory, spec, queries = monitor.plan(
        DataConfig(holdout=400),
        KnnConfig(knn_memory=100, knn_queries=50),
        rest,
        holdout,
    )
    assert len(memory) == 100 and not set(memory) & set(holdout)
    assert spec == "mnist5k:train" and set(queries) <= set(holdout)
    assert len(queries) == 50
    # Validation queries (a subset of what pretraining reads) are never in
    # the memory.
    validation = rest[:300]
    memory, _, queries = monitor.plan(
        DataConfig(holdout=400),
        KnnConfig(knn_memory=0, knn_queries=0),
        rest,
        validation,
    )
    assert len(memory) == len(rest) - 300 and len(queries) == 300
    assert not set(memory) & set(queries)
    # Without a hold-out the queries come from --eval_data.
    memory, spec, queries = monitor.plan(
        DataConfig(), KnnConfig(knn_memory=0, knn_queries=0), None, None
    )
    assert len(memory) == 4000 and spec == "mnist5k:test"
    assert len(queries) == 1000
