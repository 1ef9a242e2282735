"""The report's command line: its flags and `run_from_flags`
(`python -m cpc_tf.report`; see `cpc_tf.report` for what it does)."""

import tensorflow as tf
from absl import flags, logging

from cpc_tf.config import FlagError, PretrainConfig
from cpc_tf.config import flags as cpc_flags
from cpc_tf.reporting.planning import METHODS
from cpc_tf.reporting.runner import run_report


def define_flags(flag_values):
    """The report's flags: pretraining's and its own, on `flag_values`."""
    cpc_flags.define_pretrain_flags(flag_values)
    flags.DEFINE_string(
        "report_dir", "runs/report", "[report] Output.", flag_values=flag_values
    )
    flags.DEFINE_list(
        "fractions",
        ["1", "10", "100"],
        "[report] Label fractions (%).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "seeds",
        1,
        "[report] Evaluation seeds per cell (mean ± std).",
        flag_values=flag_values,
    )
    flags.DEFINE_list(
        "methods",
        list(METHODS),
        "[report] Methods to run: " + ", ".join(METHODS) + ".",
        flag_values=flag_values,
    )
    flags.DEFINE_list(
        "only",
        None,
        "[report] Run only the stages whose names match these shell "
        "patterns (e.g. finetune_1pct_*,pretrain); default: all.",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "archive_dir",
        None,
        "[report] Restore the report's record from here first and save "
        "it here after every stage (finished stages' results, "
        "pretraining's encoder; no checkpoints), to continue elsewhere.",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "archive_unfinished",
        False,
        "[report] With --archive_dir, also save unfinished stages' newest "
        "checkpoint and best weights, so they resume elsewhere (with "
        "--run_stages=false: snapshot a report that is still running).",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "run_stages",
        True,
        "[report] false: only write the report of the finished stages.",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "stage_processes",
        False,
        "[report] Run each stage in a process of its own (isolation for "
        "large models) instead of in this one (no start-up per stage).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "stage_workers",
        1,
        "[report] Worker processes running stages side by side, each "
        "with cores / stage_workers threads (pretraining alone first, "
        "unless a supervised stage can run beside it).",
        flag_values=flag_values,
    )
    for method, default in (
        ("linear", "flags/linear_demo.cfg"),
        ("finetune", "flags/finetune_demo.cfg"),
        ("supervised", "flags/supervised_demo.cfg"),
    ):
        flags.DEFINE_string(
            f"{method}_flagfile",
            default,
            f"[report] Flagfile of {method}.",
            flag_values=flag_values,
        )
        flags.DEFINE_list(
            f"{method}_args",
            [],
            f"[report] Extra flags for {method}, e.g. steps=100 (no --).",
            flag_values=flag_values,
        )


def run_from_flags(flag_values):
    """Runs (or resumes) the report of parsed flags; returns its markdown."""
    logging.set_verbosity(logging.WARNING)  # the stages' INFO lines
    config = cpc_flags.config_from_flags(PretrainConfig, flag_values)
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
    unknown = sorted(set(flag_values.methods) - set(METHODS))
    if unknown or not flag_values.methods:
        given = f"unknown {', '.join(unknown)}" if unknown else "none given"
        raise FlagError(
            f"--methods: {given}; choose from {', '.join(METHODS)}."
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
    _, text = run_report(
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
    return text
