"""The data-efficiency report: the paper's Figure 1 at small scale.

    python -m cpc_tf.report --flagfile=flags/demo.cfg
    python -m cpc_tf.report --flagfile=flags/cifar10.cfg \
        --report_dir=runs/report_cifar10

Runs the whole protocol: CPC pretraining with the given flags, then for
each label fraction linear evaluation on the CPC features, the same probe
on a randomly initialised encoder, fine-tuning of the CPC encoder, and the
supervised baseline from scratch. Each stage is the ordinary entry point
run as a subprocess with its flagfile (`--linear_flagfile`, ...) and the
pretraining run's data flags, in its own directory under `--report_dir`;
a stage whose `results.json` exists is not run again, so an interrupted
report resumes where it stopped. After every stage it rewrites
`report.json` (`complete` says whether every stage has finished),
`report.md` (a table) and `report.png` (accuracy against label fraction).
"""

import dataclasses
import json
import os
import subprocess
import sys
import time

from absl import app, flags

from cpc_tf import artifacts
from cpc_tf import flags as cpc_flags
from cpc_tf.config import (
    DataConfig,
    ModelConfig,
    OptimConfig,
    PretrainConfig,
    RunConfig,
)

METHODS = {
    "linear_cpc": "Linear on CPC features",
    "linear_random": "Linear on random encoder",
    "finetune": "Fine-tuned CPC encoder",
    "supervised": "Supervised from scratch",
}
RESULTS_FILE = "results.json"


def config_flag_lines(config):
    """`--name=value` lines for every field of a (nested) config."""
    lines = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            lines.extend(config_flag_lines(value))
        elif isinstance(value, bool):
            lines.append(f"--{field.name}={str(value).lower()}")
        elif isinstance(value, tuple):
            lines.append(f"--{field.name}={','.join(str(v) for v in value)}")
        else:
            lines.append(f"--{field.name}={value}")
    return lines


@dataclasses.dataclass(frozen=True)
class Stage:
    """One run of an entry point."""

    name: str
    method: str
    fraction: float
    module: str
    args: tuple

    @property
    def directory(self):
        return self.args[-1].split("=", 1)[1]


def plan(config, report_dir, fractions, flagfiles, overrides):
    """The stages of a report, pretraining first.

    Args:
        config: the `PretrainConfig` of the CPC run.
        report_dir: where every stage writes its own directory.
        fractions: label fractions in percent.
        flagfiles: dict method -> flagfile of its entry point.
        overrides: dict method -> extra `--flag=value` arguments.
    """
    pretrain_dir = os.path.join(report_dir, "pretrain")
    data = config.data
    shared = [
        f"--train_data={data.train_data}",
        f"--eval_data={data.eval_data}",
        f"--data_dir={data.data_dir}",
        f"--holdout={data.holdout}",
        f"--seed={config.run.seed}",
    ]
    whole_image = [f"--image_size={data.crop_size}"]
    stages = [
        Stage(
            "pretrain",
            "pretrain",
            100.0,
            "cpc_tf.pretrain",
            (
                f"--flagfile={os.path.join(report_dir, 'pretrain.cfg')}",
                f"--model_dir={pretrain_dir}",
            ),
        )
    ]
    modules = dict(
        linear_cpc=("cpc_tf.linear_eval", []),
        linear_random=("cpc_tf.linear_eval", ["--random_init"]),
        finetune=("cpc_tf.finetune", whole_image),
        supervised=("cpc_tf.supervised", whole_image),
    )
    for fraction in fractions:
        for method, (module, extra) in modules.items():
            name = f"{method}_{fraction:g}pct"
            pretrained = (
                []
                if method == "supervised"
                else [f"--pretrained_dir={pretrain_dir}"]
            )
            stages.append(
                Stage(
                    name,
                    method,
                    fraction,
                    module,
                    (
                        f"--flagfile={flagfiles[method]}",
                        *shared,
                        *pretrained,
                        *extra,
                        *overrides.get(method, ()),
                        f"--label_fraction={fraction:g}",
                        f"--model_dir={os.path.join(report_dir, name)}",
                    ),
                )
            )
    return stages


def stage_done(stage):
    result = (
        RESULTS_FILE if stage.method != "pretrain" else (artifacts.SUMMARY_FILE)
    )
    return os.path.exists(os.path.join(stage.directory, result))


def run_stage(stage, log_path):
    """Runs one stage's entry point; raises with its log tail on failure."""
    command = [sys.executable, "-m", stage.module, *stage.args]
    with open(log_path, "w") as log:
        log.write(" ".join(command) + "\n")
        log.flush()
        process = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    if process.returncode:
        with open(log_path) as log:
            tail = log.read()[-3000:]
        raise RuntimeError(
            f"Stage {stage.name} failed (exit {process.returncode}); its log "
            f"is {log_path}:\n{tail}"
        )


def collect(stages):
    """report.json records from the finished stages' results files."""
    records = []
    for stage in stages:
        if stage.method == "pretrain" or not stage_done(stage):
            continue
        with open(os.path.join(stage.directory, RESULTS_FILE)) as f:
            results = json.load(f)
        records.append(
            dict(
                method=stage.method,
                label_fraction=stage.fraction,
                top1=results["top1"],
                top5=results.get("top5"),
                labelled_examples=results.get("labelled_examples"),
                directory=stage.directory,
            )
        )
    return records


def markdown_table(records, fractions):
    """Top-1 accuracy (%) per method (rows) and label fraction (columns)."""
    header = "| method | " + " | ".join(f"{f:g}% labels" for f in fractions)
    lines = [header + " |", "| --- |" + " --- |" * len(fractions)]
    for method, title in METHODS.items():
        cells = []
        for fraction in fractions:
            match = [
                r
                for r in records
                if r["method"] == method and r["label_fraction"] == fraction
            ]
            cells.append(f"{100 * match[0]['top1']:.1f}" if match else "-")
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(records, fractions, path, title):
    """Top-1 accuracy against label fraction, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(6, 4))
    for method, label in METHODS.items():
        points = sorted(
            (r["label_fraction"], 100 * r["top1"])
            for r in records
            if r["method"] == method
        )
        if points:
            axes.plot(*zip(*points), marker="o", label=label)
    axes.set_xscale("log")
    axes.set_xticks(fractions, [f"{f:g}%" for f in fractions])
    axes.set_xlabel("labelled training images")
    axes.set_ylabel("top-1 accuracy (%)")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    if records:
        axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)


def run_report(
    config,
    report_dir,
    fractions,
    flagfiles,
    overrides,
    verbose=True,
    run_stages=True,
):
    """Runs (or resumes) every stage and writes the report files.

    With `run_stages=False` it only writes the files from the stages that
    have finished.
    """
    os.makedirs(report_dir, exist_ok=True)
    with open(os.path.join(report_dir, "pretrain.cfg"), "w") as f:
        f.write("\n".join(config_flag_lines(config)) + "\n")
    stages = plan(config, report_dir, fractions, flagfiles, overrides)
    start = time.perf_counter()
    # Stage times accumulate over invocations (a resumed report keeps them).
    previous = os.path.join(report_dir, "report.json")
    timings = (
        artifacts.read_json(previous).get("stage_seconds", {})
        if os.path.exists(previous)
        else {}
    )

    def write_outputs():
        return _write_outputs(
            config, report_dir, fractions, stages, timings, start
        )

    for index, stage in enumerate(stages, 1):
        prefix = f"[{index}/{len(stages)}] {stage.name}"
        if stage_done(stage) or not run_stages:
            if verbose:
                state = "done earlier" if stage_done(stage) else "not run"
                print(f"{prefix}: {state}, skipped", flush=True)
            continue
        if verbose:
            print(f"{prefix}: running ...", flush=True)
        stage_start = time.perf_counter()
        os.makedirs(stage.directory, exist_ok=True)
        run_stage(stage, os.path.join(report_dir, f"{stage.name}.log"))
        timings[stage.name] = time.perf_counter() - stage_start
        if verbose:
            print(
                f"{prefix}: finished in {timings[stage.name]:.0f} s",
                flush=True,
            )
        write_outputs()
    return write_outputs()


def _write_outputs(config, report_dir, fractions, stages, timings, start):
    """Writes report.json/.md/.png from the stages finished so far."""
    records = collect(stages)
    report = dict(
        train_data=config.data.train_data,
        fractions=list(fractions),
        complete=len(records) == len(stages) - 1,
        records=records,
        stage_seconds=timings,
        stage_seconds_total=sum(timings.values()),
        seconds_this_invocation=time.perf_counter() - start,
    )
    artifacts.write_json(os.path.join(report_dir, "report.json"), report)
    table = markdown_table(records, fractions)
    with open(os.path.join(report_dir, "report.md"), "w") as f:
        f.write(f"Top-1 accuracy (%) on {config.data.eval_data}\n\n{table}")
    plot(
        records,
        fractions,
        os.path.join(report_dir, "report.png"),
        f"CPC v2 data efficiency\n{config.data.train_data}",
    )
    return report, table


def define_flags():
    cpc_flags.define_config_flags(
        DataConfig, ModelConfig, OptimConfig, RunConfig
    )
    flags.DEFINE_string("report_dir", "runs/report", "[report] Output.")
    flags.DEFINE_list(
        "fractions", ["1", "10", "100"], "[report] Label fractions (%)."
    )
    flags.DEFINE_bool(
        "run_stages",
        True,
        "[report] false: only write the report of the finished stages.",
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
    config = cpc_flags.config_from_flags(PretrainConfig)
    flag_values = flags.FLAGS
    try:
        fractions = [float(f) for f in flag_values.fractions]
    except ValueError as error:
        raise app.UsageError(f"--fractions: {error}") from error
    flagfiles = dict(
        linear_cpc=flag_values.linear_flagfile,
        linear_random=flag_values.linear_flagfile,
        finetune=flag_values.finetune_flagfile,
        supervised=flag_values.supervised_flagfile,
    )
    for method, path in flagfiles.items():
        if not os.path.exists(path):
            raise app.UsageError(f"Flagfile {path} of {method} not found.")

    def extra(name):
        return [f"--{arg}" for arg in flag_values[f"{name}_args"].value]

    overrides = dict(
        linear_cpc=extra("linear"),
        linear_random=extra("linear"),
        finetune=extra("finetune"),
        supervised=extra("supervised"),
    )
    _, table = run_report(
        config,
        flag_values.report_dir,
        fractions,
        flagfiles,
        overrides,
        run_stages=flag_values.run_stages,
    )
    print(table)


if __name__ == "__main__":
    define_flags()
    app.run(main)
