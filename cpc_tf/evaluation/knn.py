"""The weighted k-NN classifier of Wu et al. (2018), a label-cheap monitor.

Features are mean-pooled and L2-normalised; each query takes its `k`
nearest memory features by cosine similarity, each votes for its label
with weight `exp(similarity / temperature)`, and the class with the
largest total wins. No training: it shows what the features hold while
pretraining runs (`--knn_every`) and scores a finished run
(`cpc_tf.linear_eval --probe=knn`).
"""

import numpy as np


def _normalise(features):
    features = np.asarray(features, np.float32)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def knn_predict(
    memory,
    memory_labels,
    queries,
    num_classes,
    k=200,
    temperature=0.07,
    chunk=1024,
):
    """Predicted labels int64 `[Q]` of `queries` `[Q, D]`.

    Args:
        memory: `[M, D]` features of labelled images.
        memory_labels: int `[M]`.
        queries: `[Q, D]` features to classify.
        num_classes: number of classes.
        k: neighbours that vote (at most M).
        temperature: vote weight `exp(cosine / temperature)`.
        chunk: queries per similarity block (memory use `chunk * M`).
    """
    memory = _normalise(memory)
    queries = _normalise(queries)
    labels = np.asarray(memory_labels, np.int64)
    k = min(k, len(memory))
    predictions = []
    for start in range(0, len(queries), chunk):
        similarity = queries[start : start + chunk] @ memory.T
        nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        weights = np.exp(
            np.take_along_axis(similarity, nearest, axis=1) / temperature
        )
        votes = np.zeros((len(similarity), num_classes))
        rows = np.repeat(np.arange(len(similarity)), k)
        np.add.at(votes, (rows, labels[nearest].ravel()), weights.ravel())
        predictions.append(votes.argmax(axis=1))
    return np.concatenate(predictions).astype(np.int64)


def knn_top1(memory, memory_labels, queries, query_labels, num_classes, **kw):
    """Top-1 accuracy of `knn_predict` on labelled queries."""
    predicted = knn_predict(memory, memory_labels, queries, num_classes, **kw)
    return float(np.mean(predicted == np.asarray(query_labels)))
