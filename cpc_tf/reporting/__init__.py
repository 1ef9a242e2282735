"""The data-efficiency report: its plan, runner, aggregation and plots.

A report is one pretraining run and, per label fraction and seed, five
evaluation stages: the linear probe on CPC features, the same probe on a
randomly initialised encoder, fine-tuning of the CPC encoder, the
supervised baseline from scratch and a logistic regression on raw pixels
(the floor every method must clear). Each stage is an ordinary entry point
with its flagfile, in its own directory. `aggregate` gives mean and
standard deviation over seeds per cell; `readout` the paper's number: the
fewest labels at which CPC (linear or fine-tuned) matches the supervised
baseline trained on all labels.
"""

from cpc_tf.reporting.planning import (
    CPC_METHODS,
    METHODS,
    RESULTS_FILE,
    WHOLE_IMAGE,
    WITHOUT_PRETRAINING,
    Stage,
    config_flag_lines,
    encoder_shape_flags,
    plan,
    stage_done,
    stage_needs,
)
from cpc_tf.reporting.plots import plot, plot_knn
from cpc_tf.reporting.results import (
    aggregate,
    collect,
    markdown_table,
    readout,
    test_set_statement,
)
from cpc_tf.reporting.runner import run_report

__all__ = [
    "CPC_METHODS",
    "METHODS",
    "RESULTS_FILE",
    "WHOLE_IMAGE",
    "WITHOUT_PRETRAINING",
    "Stage",
    "aggregate",
    "collect",
    "config_flag_lines",
    "encoder_shape_flags",
    "markdown_table",
    "plan",
    "plot",
    "plot_knn",
    "readout",
    "run_report",
    "stage_done",
    "stage_needs",
    "test_set_statement",
]
