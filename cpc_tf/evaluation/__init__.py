"""What the evaluation protocols (appendices B and C) share.

- `configs`: `LinearEvalConfig`, `SupervisedConfig`, `FinetuneConfig` and
  their options; every field is a flag.
- `pretrained`: the pretraining run's encoder (EMA weights, or random).
- `heads`: the appendix heads, the L2 penalty and `ClassifierTask`.
- `inputs`: patch grids or whole images for training, validation, test.
- `training`: the shared trainer with model selection on validation.
- `features`, `probe`, `knn`: cached features, the converged linear
  probe and the weighted k-NN classifier.
- `results`: top-1/top-5, `classifier.keras` and `results.json`.
- `search`: the hyperparameter search of appendix C.1 (keras-tuner).

The names below are the package's public API.
"""

from cpc_tf.config import FlagError
from cpc_tf.evaluation.configs import (
    GEOMETRY_FLAGS,
    HOLDOUT,
    PROBES,
    EvalOptions,
    FinetuneConfig,
    FinetuneOptions,
    LinearEvalConfig,
    LinearOptions,
    ProbeOptions,
    SearchConfig,
    SupervisedConfig,
    SupervisedOptions,
    has_validation,
)
from cpc_tf.evaluation.heads import (
    ClassifierTask,
    classifier,
    classifier_head,
    decayed,
    l2_penalty,
    linear_head,
)
from cpc_tf.evaluation.inputs import (
    Inputs,
    num_classes,
    test_fn,
    validation_fn,
)
from cpc_tf.evaluation.pretrained import (
    load_backbone,
    load_patch_encoder,
    pretrained_geometry,
    pretrained_results,
    read_pretrain_summary,
    read_pretrained,
)
from cpc_tf.evaluation.results import (
    CLASSIFIER_FILE,
    RESULTS_FILE,
    Evaluator,
    describe,
    dump,
    evaluate,
    finish,
    read_results,
    write_results,
)
from cpc_tf.evaluation.search import (
    OBJECTIVE,
    ProtocolTuner,
    is_tuner_worker,
    make_oracle,
    run_search,
    search_and_test,
    search_space,
    with_hyperparameters,
)
from cpc_tf.evaluation.training import BestCheckpoint, train

__all__ = [
    "CLASSIFIER_FILE",
    "GEOMETRY_FLAGS",
    "HOLDOUT",
    "OBJECTIVE",
    "PROBES",
    "RESULTS_FILE",
    "BestCheckpoint",
    "ClassifierTask",
    "EvalOptions",
    "Evaluator",
    "FinetuneConfig",
    "FinetuneOptions",
    "FlagError",
    "Inputs",
    "LinearEvalConfig",
    "LinearOptions",
    "ProbeOptions",
    "ProtocolTuner",
    "SearchConfig",
    "SupervisedConfig",
    "SupervisedOptions",
    "classifier",
    "classifier_head",
    "decayed",
    "describe",
    "dump",
    "evaluate",
    "finish",
    "has_validation",
    "is_tuner_worker",
    "l2_penalty",
    "linear_head",
    "load_backbone",
    "load_patch_encoder",
    "make_oracle",
    "num_classes",
    "pretrained_geometry",
    "pretrained_results",
    "read_pretrain_summary",
    "read_pretrained",
    "read_results",
    "run_search",
    "search_and_test",
    "search_space",
    "test_fn",
    "train",
    "validation_fn",
    "with_hyperparameters",
    "write_results",
]
