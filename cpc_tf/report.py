"""The data-efficiency report: the paper's Figure 1 at small scale.

    python -m cpc_tf.report --flagfile=flags/report_demo.cfg
    python -m cpc_tf.report --flagfile=flags/report_cifar10.cfg

Pretrains CPC once with the given flags (the `--holdout` images excluded),
then for each label fraction and each of `--seeds` seeds runs linear
evaluation on the CPC features, the same probe on a randomly initialised
encoder, fine-tuning of the CPC encoder, the supervised baseline from
scratch and a logistic regression on raw pixels (`reporting.plan`). Each
stage is the ordinary entry point (run in this process, in one of its
own with `--stage_processes`, or in `--stage_workers` worker processes
side by side, each with its share of the cores and the supervised
baseline beside pretraining) with its flagfile (`--linear_flagfile`,
...) and the pretraining run's data flags, in its own directory under
`--report_dir`; a stage whose results exist is not
run again, so an interrupted report resumes where it stopped. After every
stage it rewrites `report.json`, `report.md` (mean ± std over seeds, the
test set and whether pretraining saw it, the readout) and `report.png`
(accuracy against label fraction with error bars), and `knn.png` (the
k-NN monitor during pretraining).
"""

from absl import app, flags

from cpc_tf.protocols import runtime
from cpc_tf.reporting import command

if __name__ == "__main__":
    command.define_flags(flags.FLAGS)
    app.run(
        runtime.entry_point(
            lambda argv: print(command.run_from_flags(flags.FLAGS))
        )
    )
