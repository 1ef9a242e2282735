"""A recipe sweep: short pretraining trials scored on validation images.

    python tools/sweep.py --base=flags/cifar10.cfg \
        --trials=sweeps/cifar10_round1.json --sweep_dir=runs/sweep \
        --steps=400

Each trial is `cpc_tf.pretrain` with the base flagfile, the trial's flag
overrides and a step budget (`--steps`, or the trial's own `steps`),
followed by the cached linear probe (`cpc_tf.linear_eval --probe=cached`
on `--probe_fraction` % of the labels, `--probe_flagfile`). A trial is
scored on VALIDATION images only, never the test set: the k-NN monitor's
last top-1 (it queries the `--validation` images) and the probe's
validation top-1. Trials run in order, one at a time; a finished trial
(`trial_dir/score.json`) is not run again, so an interrupted sweep
resumes. After every trial `sweep.json` and `sweep.md` (a table sorted by
the probe's validation top-1) are rewritten in `--sweep_dir`. Every file
goes through `tf.io.gfile`, so `--sweep_dir` may be `gs://...`.

The trials file is a JSON list of `{"name": str, "flags": {flag: value},
"steps": optional int}`.
"""

import os
import subprocess
import sys
import time

import tensorflow as tf
from absl import app, flags

from cpc_tf.rundir import artifacts


def define_flags():
    """Defines the sweep's flags (called by the entry point only)."""
    flags.DEFINE_string("base", "flags/cifar10.cfg", "Pretraining flagfile.")
    flags.DEFINE_string("trials", None, "JSON list of trials.")
    flags.DEFINE_string("sweep_dir", "runs/sweep", "Output directory.")
    flags.DEFINE_integer("steps", 400, "Pretraining steps per trial.")
    flags.DEFINE_string(
        "probe_flagfile", "flags/linear_cifar10.cfg", "Linear-probe flagfile."
    )
    flags.DEFINE_float("probe_fraction", 10, "Label fraction of the probe (%).")
    flags.DEFINE_list(
        "only", [], "Run only these trials (names); the table lists all done."
    )
    flags.DEFINE_list(
        "pretrain_args",
        [],
        "Flags for every trial's pretraining, e.g. knn_memory=2000 (no --).",
    )
    flags.mark_flag_as_required("trials")


def _flag_args(values):
    args = []
    for name, value in values.items():
        if isinstance(value, bool):
            value = str(value).lower()
        elif isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        args.append(f"--{name}={value}")
    return args


def _run(command, log_path):
    """Runs `command`, its output streamed to `log_path`; raises on failure
    with the output's tail."""
    tail = ""
    with tf.io.gfile.GFile(log_path, "w") as log:
        log.write(" ".join(command) + "\n")
        with subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ) as process:
            for line in process.stdout:
                log.write(line)
                log.flush()
                tail = (tail + line)[-2000:]
    if process.returncode:
        raise RuntimeError(f"{command[2]} failed ({log_path}):\n{tail}")


def run_trial(trial, values):
    """Pretrains and probes one trial; returns its score record."""
    directory = os.path.join(values.sweep_dir, trial["name"])
    tf.io.gfile.makedirs(directory)
    pretrain_dir = os.path.join(directory, "pretrain")
    steps = trial.get("steps", values.steps)
    start = time.perf_counter()
    _run(
        [
            sys.executable,
            "-m",
            "cpc_tf.pretrain",
            f"--flagfile={values.base}",
            *[f"--{arg}" for arg in values.pretrain_args],
            *_flag_args(trial.get("flags", {})),
            f"--steps={steps}",
            f"--model_dir={pretrain_dir}",
        ],
        os.path.join(directory, "pretrain.log"),
    )
    pretrain_seconds = time.perf_counter() - start
    probe_dir = os.path.join(directory, "probe")
    _run(
        [
            sys.executable,
            "-m",
            "cpc_tf.linear_eval",
            f"--flagfile={values.probe_flagfile}",
            f"--pretrained_dir={pretrain_dir}",
            "--probe=cached",
            "--probe_cache=false",
            f"--label_fraction={values.probe_fraction:g}",
            f"--model_dir={probe_dir}",
        ],
        os.path.join(directory, "probe.log"),
    )
    summary = artifacts.read_json(os.path.join(pretrain_dir, "summary.json"))
    probe = artifacts.read_json(os.path.join(probe_dir, "results.json"))
    return dict(
        name=trial["name"],
        flags=trial.get("flags", {}),
        steps=summary["steps"],
        images_per_s=summary["images_per_s"],
        pretrain_seconds=pretrain_seconds,
        infonce_accuracy=summary["accuracy"],
        last_loss=summary["last_loss"],
        knn_top1=summary.get("knn_top1"),
        knn_history=summary.get("history", {}).get("knn_top1"),
        probe_val_top1=probe["validation"]["top1"],
        probe_l2=probe["probe"]["l2"],
        parameters=summary["parameters"],
    )


def table(scores):
    """Markdown, best probe validation top-1 first."""
    lines = [
        "| trial | flags | steps | images/s | k-NN val top-1 | "
        "probe val top-1 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for s in sorted(scores, key=lambda s: -s["probe_val_top1"]):
        knn = "-" if s["knn_top1"] is None else f"{100 * s['knn_top1']:.1f}"
        lines.append(
            f"| {s['name']} | {' '.join(_flag_args(s['flags'])) or '(base)'} "
            f"| {s['steps']} | {s['images_per_s']:.1f} | {knn} | "
            f"{100 * s['probe_val_top1']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def run_sweep(trials, sweep_dir, run_one, only=(), base=None):
    """Runs the trials not yet scored, in order; returns every score.

    `run_one(trial) -> dict` pretrains and probes one trial. A trial with
    `sweep_dir/NAME/score.json` is read back instead of run, so an
    interrupted sweep resumes; `only` restricts which trials may run.
    `sweep.json` and `sweep.md` are rewritten after every trial.
    """
    tf.io.gfile.makedirs(sweep_dir)
    scores = []
    for trial in trials:
        path = os.path.join(sweep_dir, trial["name"], "score.json")
        if artifacts.read_record(path, ("probe_val_top1",)) is None:
            if only and trial["name"] not in only:
                continue
            damaged = artifacts.set_aside(path)
            if damaged:
                print(f"trial {trial['name']}: kept damaged {damaged}")
            print(f"trial {trial['name']}: running ...", flush=True)
            score = run_one(trial)
            tf.io.gfile.makedirs(os.path.dirname(path))
            artifacts.write_json(path, score)
        scores.append(artifacts.read_json(path))
        print(
            f"trial {trial['name']}: probe val "
            f"{100 * scores[-1]['probe_val_top1']:.1f}",
            flush=True,
        )
        artifacts.write_json(
            os.path.join(sweep_dir, "sweep.json"),
            dict(base=base, trials=scores),
        )
        with tf.io.gfile.GFile(os.path.join(sweep_dir, "sweep.md"), "w") as f:
            f.write(table(scores))
    return scores


def main(argv):
    del argv
    values = flags.FLAGS
    trials = artifacts.read_json(values.trials)
    scores = run_sweep(
        trials,
        values.sweep_dir,
        lambda trial: run_trial(trial, values),
        only=values.only,
        base=values.base,
    )
    print(table(scores))


if __name__ == "__main__":
    define_flags()
    app.run(main)
