"""Runs a report's stages (resuming, in pieces, side by side) and writes
report.json, report.md, report.png and knn.png after every stage."""

import fnmatch
import os
import time

import tensorflow as tf

from cpc_tf.config import FlagError
from cpc_tf.reporting import archive, planning, plots, results
from cpc_tf.reporting import stages as stage_runner
from cpc_tf.rundir import artifacts
from cpc_tf.training import machine


def run_report(
    config,
    report_dir,
    fractions,
    flagfiles,
    overrides,
    seeds=1,
    verbose=True,
    run_stages=True,
    in_process=True,
    methods=None,
    workers=1,
    only=None,
    archive_dir=None,
    archive_unfinished=False,
):
    """Runs (or resumes) every stage and writes the report files.

    With `run_stages=False` it only writes the files from the stages that
    have finished; `in_process=False` runs each stage in a subprocess of
    its own (isolation for large models); `workers > 1` runs the
    evaluation stages, after pretraining, that many processes at a time
    (`stages.run_side_by_side`; stage seconds then overlap), pretraining
    among them when some stage does not need it. `only` (shell patterns
    of stage names, e.g. `["finetune_1pct_*"]`) runs just those stages;
    the report still shows every finished one. With `archive_dir` the
    report first restores what that archive holds and saves its record
    there after every stage (`archive`), so a report too long for one
    machine continues on another; `archive_unfinished` saves unfinished
    stages' newest checkpoints too (with `run_stages=False`: a snapshot
    of a report still running). Returns `(report dict, markdown)`.
    """
    stages = planning.plan(
        config, report_dir, fractions, flagfiles, overrides, seeds, methods
    )
    _check_patterns(only, stages)
    if archive_dir:
        archive.restore(archive_dir, report_dir)
    start = time.perf_counter()
    # Stage times and machines accumulate over invocations (a resumed
    # report keeps them).
    previous = (
        artifacts.read_record(os.path.join(report_dir, "report.json")) or {}
    )
    timings = previous.get("stage_seconds", {})
    machines = previous.get("stage_machines", {})
    this_machine = machine.cpu_model()

    def write_outputs():
        outputs = _write_outputs(
            config,
            report_dir,
            fractions,
            stages,
            dict(stage_seconds=timings, stage_machines=machines),
            start,
            seeds,
        )
        if archive_dir:
            archive.save(report_dir, archive_dir, archive_unfinished)
        return outputs

    index = {stage.name: i for i, stage in enumerate(stages, 1)}

    def prefix(stage):
        return f"[{index[stage.name]}/{len(stages)}] {stage.name}"

    def started(stage):
        tf.io.gfile.makedirs(stage.directory)
        if verbose:
            print(f"{prefix(stage)}: running ...", flush=True)

    def finished(stage, seconds):
        timings[stage.name] = seconds
        machines[stage.name] = this_machine
        if verbose:
            print(f"{prefix(stage)}: finished in {seconds:.0f} s", flush=True)
        write_outputs()

    def log_path(stage):
        return os.path.join(report_dir, f"{stage.name}.log")

    to_run = []
    for stage in stages:
        done = planning.stage_done(stage)
        selected = only is None or any(
            fnmatch.fnmatchcase(stage.name, pattern) for pattern in only
        )
        if done or not run_stages or not selected:
            if verbose:
                state = (
                    "done earlier"
                    if done
                    else ("not run" if not run_stages else "not selected")
                )
                print(f"{prefix(stage)}: {state}, skipped", flush=True)
        else:
            damaged = artifacts.set_aside(planning.stage_record_path(stage))
            if damaged and verbose:
                print(
                    f"{prefix(stage)}: its record is damaged (kept as "
                    f"{damaged}); running it again",
                    flush=True,
                )
            to_run.append(stage)
    _check_needs(to_run, stages)
    tf.io.gfile.makedirs(report_dir)
    with tf.io.gfile.GFile(os.path.join(report_dir, "pretrain.cfg"), "w") as f:
        f.write("\n".join(planning.config_flag_lines(config)) + "\n")
    # Pretraining comes first: the other stages read it. With workers it
    # runs among them when some stage does not need it.
    beside = any(
        stage.method != "pretrain" and not planning.stage_needs(stage)
        for stage in to_run
    )
    if workers == 1:
        one_by_one, to_run = to_run, []
    elif to_run and to_run[0].method == "pretrain" and not beside:
        one_by_one, to_run = to_run[:1], to_run[1:]
    else:
        one_by_one = []
    for stage in one_by_one:
        started(stage)
        stage_start = time.perf_counter()
        if in_process:
            stage_runner.run_in_process(stage, log_path(stage))
        else:
            stage_runner.run_in_subprocess(stage, log_path(stage))
        finished(stage, time.perf_counter() - stage_start)
    if to_run:
        # Pretraining, then whole-image training, probes last: the long
        # stages do not leave one worker alone at the end.
        to_run.sort(
            key=lambda stage: (
                stage.method != "pretrain",
                stage.method not in planning.WHOLE_IMAGE,
            )
        )
        stage_runner.run_side_by_side(
            to_run,
            log_path,
            workers,
            started,
            finished,
            needs=planning.stage_needs,
        )
    return write_outputs()


def _check_patterns(only, stages):
    """Fails when an `--only` pattern matches no stage (a typo)."""
    names = [stage.name for stage in stages]
    for pattern in only or ():
        if not fnmatch.filter(names, pattern):
            raise FlagError(
                f"--only: {pattern} matches no stage; stages are named "
                f"like {names[0]}, {names[-1]}."
            )


def _check_needs(to_run, stages):
    """Fails before any compute when a stage to run needs one that has
    neither finished nor been selected (`--only`)."""
    names = {stage.name for stage in to_run}
    finished = {stage.name for stage in stages if planning.stage_done(stage)}
    for stage in to_run:
        missing = set(planning.stage_needs(stage)) - names - finished
        if missing:
            raise FlagError(
                f"--only: {stage.name} needs {', '.join(sorted(missing))}, "
                "which has not finished; select it too."
            )


def _write_outputs(
    config, report_dir, fractions, stages, stage_log, start, seeds
):
    """Writes report.json/.md/.png (and knn.png) from the finished stages.

    `stage_log` holds `stage_seconds` and `stage_machines` (name -> the
    CPU model each stage ran on).
    """
    timings = stage_log["stage_seconds"]
    records = results.collect(stages)
    cells = results.aggregate(records)
    readout = results.readout(cells, fractions)
    summary_path = os.path.join(report_dir, "pretrain", artifacts.SUMMARY_FILE)
    pretrain = (
        artifacts.read_json(summary_path)
        if tf.io.gfile.exists(summary_path)
        else None
    )
    statement = results.test_set_statement(records, pretrain)
    report = dict(
        train_data=config.data.train_data,
        fractions=list(fractions),
        seeds=seeds,
        complete=len(records) == len(stages) - 1,
        records=records,
        cells=[
            dict(method=method, label_fraction=fraction, **cell)
            for (method, fraction), cell in sorted(cells.items())
        ],
        readout=readout,
        test_set=statement,
        pretraining=None
        if pretrain is None
        else dict(
            steps=pretrain.get("steps"),
            train_examples=pretrain.get("train_examples"),
            holdout=pretrain.get("holdout"),
            knn_top1=pretrain.get("history", {}).get("knn_top1"),
            wall_seconds=pretrain.get("wall_seconds"),
        ),
        stage_seconds=timings,
        stage_seconds_total=sum(timings.values()),
        stage_machines=stage_log["stage_machines"],
        seconds_this_invocation=time.perf_counter() - start,
    )
    artifacts.write_json(os.path.join(report_dir, "report.json"), report)
    table = results.markdown_table(cells, fractions)
    seeds_note = f"mean ± std over {seeds} seeds" if seeds > 1 else "one seed"
    text = (
        f"Top-1 accuracy (%), {seeds_note}.\n\n{statement}\n\n{table}\n"
        f"Readout: {readout['sentence']}\n"
    )
    with tf.io.gfile.GFile(os.path.join(report_dir, "report.md"), "w") as f:
        f.write(text)
    plots.plot(
        cells,
        fractions,
        os.path.join(report_dir, "report.png"),
        f"CPC v2 data efficiency ({seeds_note})\n{config.data.train_data}",
    )
    knn = (report["pretraining"] or {}).get("knn_top1")
    if knn:
        plots.plot_knn(
            knn,
            os.path.join(report_dir, "knn.png"),
            f"k-NN monitor during pretraining\n{config.data.train_data}",
        )
    return report, text
