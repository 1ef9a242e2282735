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

import tensorflow as tf
from absl import app, flags, logging

from cpc_tf import flags as cpc_flags
from cpc_tf import reporting, runtime
from cpc_tf.config import (
    DataConfig,
    FlagError,
    KnnConfig,
    ModelConfig,
    OptimConfig,
    PretrainConfig,
    RunConfig,
)


def define_flags():
    cpc_flags.define_config_flags(
        DataConfig, ModelConfig, OptimConfig, RunConfig, KnnConfig
    )
    flags.DEFINE_string("report_dir", "runs/report", "[report] Output.")
    flags.DEFINE_list(
        "fractions", ["1", "10", "100"], "[report] Label fractions (%)."
    )
    flags.DEFINE_integer(
        "seeds", 1, "[report] Evaluation seeds per cell (mean ± std)."
    )
    flags.DEFINE_list(
        "methods",
        list(reporting.METHODS),
        "[report] Methods to run: " + ", ".join(reporting.METHODS) + ".",
    )
    flags.DEFINE_list(
        "only",
        None,
        "[report] Run only the stages whose names match these shell "
        "patterns (e.g. finetune_1pct_*,pretrain); default: all.",
    )
    flags.DEFINE_string(
        "archive_dir",
        None,
        "[report] Restore the report's record from here first and save "
        "it here after every stage (finished stages' results, "
        "pretraining's encoder; no checkpoints), to continue elsewhere.",
    )
    flags.DEFINE_bool(
        "archive_unfinished",
        False,
        "[report] With --archive_dir, also save unfinished stages' newest "
        "checkpoint and best weights, so they resume elsewhere (with "
        "--run_stages=false: snapshot a report that is still running).",
    )
    flags.DEFINE_bool(
        "run_stages",
        True,
        "[report] false: only write the report of the finished stages.",
    )
    flags.DEFINE_bool(
        "stage_processes",
        False,
        "[report] Run each stage in a process of its own (isolation for "
        "large models) instead of in this one (no start-up per stage).",
    )
    flags.DEFINE_integer(
        "stage_workers",
        1,
        "[report] Worker processes running stages side by side, each "
        "with cores / stage_workers threads (pretraining alone first, "
        "unless a supervised stage can run beside it).",
    )
    for method, default in (
        ("linear", "flags/linear_demo.cfg"),
        ("finetune", "flags/finetune_demo.cfg"),
        ("supervised", "flags/supervised_demo.cfg"),
    ):
        flags.DEFINE_string(
            f"{method}_flagfile", default, f"[report] Flagfile of {method}."
        )
        flags.DEFINE_list(
            f"{method}_args",
            [],
            f"[report] Extra flags for {method}, e.g. steps=100 (no --).",
        )


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # the stages' INFO lines
    config = cpc_flags.config_from_flags(PretrainConfig)
    flag_values = flags.FLAGS
    try:
        fractions = [float(f) for f in flag_values.fractions]
    except ValueError as error:
        raise FlagError(f"--fractions: {error}") from None
    if flag_values.stage_workers < 1:
        raise FlagError(
            f"--stage_workers: must be >= 1, got {flag_values.stage_workers}."
        )
    if flag_values.seeds < 1:
        raise FlagError(f"--seeds: must be >= 1, got {flag_values.seeds}.")
    if flag_values.archive_unfinished and not flag_values.archive_dir:
        raise FlagError("--archive_unfinished=true: needs --archive_dir.")
    unknown = sorted(set(flag_values.methods) - set(reporting.METHODS))
    if unknown or not flag_values.methods:
        given = f"unknown {', '.join(unknown)}" if unknown else "none given"
        raise FlagError(
            f"--methods: {given}; choose from {', '.join(reporting.METHODS)}."
        )
    linear = flag_values.linear_flagfile
    flagfiles = dict(
        linear_cpc=linear,
        linear_random=linear,
        finetune=flag_values.finetune_flagfile,
        supervised=flag_values.supervised_flagfile,
        pixels=linear,
    )
    for flag in ("linear", "finetune", "supervised"):
        path = flag_values[f"{flag}_flagfile"].value
        if not tf.io.gfile.exists(path):
            raise FlagError(f"--{flag}_flagfile: {path} not found.")

    def extra(name):
        return [f"--{arg}" for arg in flag_values[f"{name}_args"].value]

    overrides = dict(
        linear_cpc=extra("linear"),
        linear_random=extra("linear"),
        finetune=extra("finetune"),
        supervised=extra("supervised"),
        pixels=extra("linear"),
    )
    _, text = reporting.run_report(
        config,
        flag_values.report_dir,
        fractions,
        flagfiles,
        overrides,
        seeds=flag_values.seeds,
        run_stages=flag_values.run_stages,
        in_process=not flag_values.stage_processes,
        methods=flag_values.methods,
        workers=flag_values.stage_workers,
        only=flag_values.only,
        archive_dir=flag_values.archive_dir,
        archive_unfinished=flag_values.archive_unfinished,
    )
    print(text)


if __name__ == "__main__":
    define_flags()
    app.run(runtime.entry_point(main))
