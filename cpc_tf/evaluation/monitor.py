"""The k-NN monitor of pretraining (`--knn_every`).

Every N steps the Polyak-averaged encoder embeds a fixed labelled sample
of the training images (the memory, `--knn_memory`, never hold-out or
query images) and the queries (`--knn_queries` of the validation images
when `--validation` is set, else of the hold-out, else of `--eval_data`),
and the weighted k-NN top-1 (`knn.knn_top1`) goes to TensorBoard, the
progress bar and `summary.json`. Querying the validation images keeps the
test set out of any choice made on the monitor (a recipe sweep).
"""

import numpy as np

from cpc_tf.data import sources
from cpc_tf.evaluation import features, knn
from cpc_tf.evaluation.inputs import Inputs

_MEMORY_SALT = 104729


def _first(ids, count, seed):
    """`count` of `ids` in a fixed random order (all when `count` is 0)."""
    ids = np.asarray(ids, np.int64)
    order = np.random.default_rng([seed, _MEMORY_SALT]).permutation(len(ids))
    chosen = ids[order] if not count else ids[order[:count]]
    return np.sort(chosen)


def plan(data, knn_config, train_ids, query_ids):
    """`(memory ids, query spec, query ids)`, or a one-line reason why the
    monitor cannot run (a string).

    Args:
        data: the pretraining `DataConfig`.
        knn_config: the `KnnConfig`.
        train_ids: indices pretraining reads (None: all of the source).
        query_ids: indices of `--train_data` to query (the validation
            images, else the hold-out), or None to query `--eval_data`.
    """
    try:
        labels = sources.source_labels(
            data.train_data, data_dir=data.data_dir or None
        )
    except sources.SourceError as error:
        return f"k-NN monitor off: no labels in --train_data ({error})."
    if len(np.unique(labels)) < 2:
        return "k-NN monitor off: --train_data has fewer than two labels."
    pool = np.arange(len(labels)) if train_ids is None else train_ids
    if query_ids is not None:
        pool = np.setdiff1d(pool, query_ids)
    memory = _first(pool, knn_config.knn_memory, data.holdout_seed)
    if query_ids is not None:
        queries = _first(query_ids, knn_config.knn_queries, 0)
        return memory, data.train_data, queries
    if data.eval_data in ("", "holdout"):
        return "k-NN monitor off: no --holdout and no --eval_data to query."
    _, info = sources.load_source(
        data.eval_data, data_dir=data.data_dir or None
    )
    count = knn_config.knn_queries or info.num_examples
    if info.num_examples:
        count = min(count, info.num_examples)
    if not count:
        return "k-NN monitor off: set --knn_queries for this --eval_data."
    return memory, data.eval_data, np.arange(count, dtype=np.int64)


class KnnMonitor:
    """A `trainer.Hook` function: `step -> {"knn_top1": top-1}`, with
    `knn_gain` over the step-0 (random init) score once there is one.

    Args:
        loop: the pretraining `trainer.Trainer` (EMA weights, strategy).
        encoder: the patch encoder, patch grids -> latent grids.
        data: the `DataConfig` (evaluation patch geometry).
        knn_config: the `KnnConfig`.
        memory_ids, query_spec, query_ids: from `plan`.
        batch_size: global batch of the embedding passes.
        use_ema: embed with the Polyak-averaged weights.
    """

    def __init__(
        self,
        loop,
        encoder,
        data,
        knn_config,
        memory_ids,
        query_spec,
        query_ids,
        batch_size,
        use_ema=True,
    ):
        self.loop = loop
        self.encoder = encoder
        self.config = knn_config
        self.use_ema = use_ema
        inputs = Inputs(data, patches=True, augment=False)
        self.memory_fn = inputs.eval_fn(data.train_data, batch_size, memory_ids)
        self.query_fn = inputs.eval_fn(query_spec, batch_size, query_ids)
        _, info = sources.load_source(
            data.train_data, data_dir=data.data_dir or None
        )
        self.num_classes = info.num_classes
        # The random-init score (step 0), which later scores are set against.
        self.at_start = None

    def __call__(self, step):
        strategy = self.loop.strategy
        with self.loop.evaluation_weights(self.use_ema):
            memory = features.extract(strategy, self.encoder, self.memory_fn)
            queries = features.extract(strategy, self.encoder, self.query_fn)
        top1 = knn.knn_top1(
            *memory,
            *queries,
            self.num_classes,
            k=self.config.knn_k,
            temperature=self.config.knn_temperature,
        )
        if step == 0:
            self.at_start = top1
            return {"knn_top1": top1}
        if self.at_start is None:
            return {"knn_top1": top1}
        return {"knn_top1": top1, "knn_gain": top1 - self.at_start}
