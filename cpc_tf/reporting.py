"""The data-efficiency report's plan, aggregation and readout.

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

import dataclasses
import os

import numpy as np
import tensorflow as tf

from cpc_tf import artifacts
from cpc_tf.config import ENCODER_SHAPE_FIELDS

METHODS = {
    "linear_cpc": "Linear on CPC features",
    "linear_random": "Linear on random encoder",
    "finetune": "Fine-tuned CPC encoder",
    "supervised": "Supervised from scratch",
    "pixels": "Logistic regression on pixels",
}
CPC_METHODS = ("linear_cpc", "finetune")
# Methods that train a network on whole images (the long stages).
WHOLE_IMAGE = ("finetune", "supervised")
# Methods that read nothing of pretraining (they may run beside it).
WITHOUT_PRETRAINING = ("supervised",)
RESULTS_FILE = "results.json"


def _flag_line(name, value):
    """`--name=value` as a flagfile line (booleans lower case, tuples
    comma-separated)."""
    if isinstance(value, bool):
        return f"--{name}={str(value).lower()}"
    if isinstance(value, tuple):
        return f"--{name}={','.join(str(v) for v in value)}"
    return f"--{name}={value}"


def config_flag_lines(config):
    """`--name=value` lines for every field of a (nested) config."""
    lines = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            lines.extend(config_flag_lines(value))
        else:
            lines.append(_flag_line(field.name, value))
    return lines


def encoder_shape_flags(model_config):
    """The `--flag=value`s that give a network the shape of the CPC
    encoder of `model_config` (its normalization stays the protocol's)."""
    return [
        _flag_line(name, getattr(model_config, name))
        for name in ENCODER_SHAPE_FIELDS
    ]


@dataclasses.dataclass(frozen=True)
class Stage:
    """One run of an entry point."""

    name: str
    method: str
    fraction: float
    seed: int
    module: str
    args: tuple

    @property
    def directory(self):
        return self.args[-1].split("=", 1)[1]


def plan(
    config, report_dir, fractions, flagfiles, overrides, seeds=1, methods=None
):
    """The stages of a report, pretraining first.

    Whole-image stages run on the pretraining crop (`--image_size`), and
    the supervised baseline trains a network of the CPC encoder's shape
    (`encoder_shape_flags`, after any override), so its flagfile's shape
    flags cannot drift from the encoder's.

    Args:
        config: the `PretrainConfig` of the CPC run.
        report_dir: where every stage writes its own directory.
        fractions: label fractions in percent.
        flagfiles: dict method -> flagfile of its entry point.
        overrides: dict method -> extra `--flag=value` arguments.
        seeds: evaluation seeds per cell (`config.run.seed`, +1, ...); one
            pretrained encoder serves them all.
        methods: the `METHODS` to run (default: all), in `METHODS` order.
    """
    pretrain_dir = os.path.join(report_dir, "pretrain")
    data = config.data
    shared = [
        f"--train_data={data.train_data}",
        f"--eval_data={data.eval_data}",
        f"--data_dir={data.data_dir}",
        f"--holdout={data.holdout}",
        f"--holdout_seed={data.holdout_seed}",
        f"--validation={data.validation}",
    ]
    whole_image = [f"--image_size={data.crop_size}"]
    encoder_shape = encoder_shape_flags(config.model)
    stages = [
        Stage(
            "pretrain",
            "pretrain",
            100.0,
            config.run.seed,
            "cpc_tf.pretrain",
            (
                f"--flagfile={os.path.join(report_dir, 'pretrain.cfg')}",
                f"--model_dir={pretrain_dir}",
            ),
        )
    ]
    pixels = ["--probe=cached", "--probe_features=pixels"]
    modules = dict(
        linear_cpc=("cpc_tf.linear_eval", []),
        linear_random=("cpc_tf.linear_eval", ["--random_init"]),
        finetune=("cpc_tf.finetune", whole_image),
        supervised=("cpc_tf.supervised", encoder_shape + whole_image),
        pixels=("cpc_tf.linear_eval", pixels),
    )
    if methods is not None:
        modules = {k: v for k, v in modules.items() if k in methods}
    for fraction in fractions:
        for offset in range(seeds):
            seed = config.run.seed + offset
            for method, (module, extra) in modules.items():
                name = f"{method}_{fraction:g}pct"
                if seeds > 1:
                    name += f"_seed{seed}"
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
                        seed,
                        module,
                        (
                            f"--flagfile={flagfiles[method]}",
                            *shared,
                            *pretrained,
                            *overrides.get(method, ()),
                            *extra,
                            f"--seed={seed}",
                            f"--label_fraction={fraction:g}",
                            f"--model_dir={os.path.join(report_dir, name)}",
                        ),
                    )
                )
    return stages


def stage_needs(stage):
    """Names of the stages that must finish before `stage` starts."""
    if stage.method in ("pretrain", *WITHOUT_PRETRAINING):
        return ()
    return ("pretrain",)


def stage_done(stage):
    result = (
        RESULTS_FILE if stage.method != "pretrain" else (artifacts.SUMMARY_FILE)
    )
    return tf.io.gfile.exists(os.path.join(stage.directory, result))


def collect(stages):
    """Records of the finished evaluation stages' `results.json`."""
    records = []
    for stage in stages:
        if stage.method == "pretrain" or not stage_done(stage):
            continue
        results = artifacts.read_json(
            os.path.join(stage.directory, RESULTS_FILE)
        )
        records.append(
            dict(
                method=stage.method,
                label_fraction=stage.fraction,
                seed=stage.seed,
                top1=results["top1"],
                top5=results.get("top5"),
                labelled_examples=results.get("labelled_examples"),
                test_set=results.get("test_set"),
                test_excluded_from_pretraining=results.get(
                    "test_excluded_from_pretraining"
                ),
                directory=stage.directory,
            )
        )
    return records


def aggregate(records):
    """`{(method, fraction): {"mean", "std", "n", "values"}}` of top-1 (%).

    `std` is the sample standard deviation over seeds (0 for one seed).
    """
    cells = {}
    for record in records:
        key = (record["method"], record["label_fraction"])
        cells.setdefault(key, []).append(100.0 * record["top1"])
    summary = {}
    for key, values in cells.items():
        values = np.asarray(values)
        summary[key] = dict(
            mean=float(values.mean()),
            std=float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            n=len(values),
            values=[float(v) for v in values],
        )
    return summary


def readout(cells, fractions):
    """The paper's readout: the fewest labels at which CPC (linear or
    fine-tuned, by mean over seeds) reaches the supervised baseline
    trained on all labels.

    Returns:
        `{"target", "method", "fraction", "mean", "sentence"}`; `method`
        and `fraction` are None when CPC does not reach it at any fraction
        (or the report lacks the 100% supervised cell).
    """
    target = cells.get(("supervised", 100.0))
    if target is None:
        return dict(
            target=None,
            method=None,
            fraction=None,
            mean=None,
            sentence="No readout: the report needs the supervised baseline "
            "at 100% of the labels (100 in --fractions, supervised in "
            "--methods).",
        )
    best = None
    for fraction in sorted(fractions):
        for method in CPC_METHODS:
            cell = cells.get((method, float(fraction)))
            if cell and cell["mean"] >= target["mean"]:
                if best is None or cell["mean"] > best[2]:
                    best = (method, float(fraction), cell["mean"])
        if best is not None:
            break
    goal = f"{target['mean']:.1f}% (supervised, all labels)"
    if best is None:
        top = max(
            (
                (cell["mean"], method, fraction)
                for (method, fraction), cell in cells.items()
                if method in CPC_METHODS
            ),
            default=None,
        )
        tail = (
            f"; its best is {top[0]:.1f}% ({METHODS[top[1]]}, "
            f"{top[2]:g}% labels)"
            if top
            else ""
        )
        return dict(
            target=target["mean"],
            method=None,
            fraction=None,
            mean=None,
            sentence=f"CPC does not reach {goal} at any fraction tested"
            + tail
            + ".",
        )
    method, fraction, mean = best
    return dict(
        target=target["mean"],
        method=method,
        fraction=fraction,
        mean=mean,
        sentence=f"CPC reaches {goal} with {fraction:g}% of the labels: "
        f"{METHODS[method]} {mean:.1f}%.",
    )


def markdown_table(cells, fractions):
    """Top-1 (%) mean ± std over seeds: methods (rows) by fraction."""
    header = "| method | " + " | ".join(f"{f:g}% labels" for f in fractions)
    lines = [header + " |", "| --- |" + " --- |" * len(fractions)]
    for method, title in METHODS.items():
        row = []
        for fraction in fractions:
            cell = cells.get((method, float(fraction)))
            if cell is None:
                row.append("-")
            elif cell["n"] > 1:
                row.append(
                    f"{cell['mean']:.1f} ± {cell['std']:.1f} (n={cell['n']})"
                )
            else:
                row.append(f"{cell['mean']:.1f}")
        lines.append(f"| {title} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def test_set_statement(records, pretrain_summary):
    """One sentence naming the test set and whether pretraining saw it."""
    named = [r["test_set"] for r in records if r.get("test_set")]
    if not named:
        return "Test set: not known yet."
    source = named[0]["source"]
    examples = named[0]["examples"]
    # Only the stages that read the pretrained encoder can have seen it;
    # the supervised network never does and records no answer.
    flags = {
        r.get("test_excluded_from_pretraining")
        for r in records
        if r.get("method", CPC_METHODS[0]) in CPC_METHODS
    }
    if flags == {True}:
        holdout = (pretrain_summary or {}).get("holdout")
        if "hold-out" in source and holdout:
            how = (
                f"they are among the {holdout['count']} hold-out ids "
                f"pretraining excluded ({holdout['file']})"
            )
        else:
            how = "they are not part of the pretraining source"
        seen = f"Pretraining did not see these images: {how}."
    elif False in flags:
        seen = "WARNING: pretraining read some of these test images."
    else:
        seen = "Whether pretraining saw these images is not recorded."
    return f"Test set: {source}, {examples} images. {seen}"


def plot(cells, fractions, path, title):
    """Top-1 mean against label fraction, error bars of one std."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(8.5, 4.2))
    for method, label in METHODS.items():
        points = sorted(
            (fraction, cell["mean"], cell["std"])
            for (name, fraction), cell in cells.items()
            if name == method
        )
        if points:
            x, y, error = zip(*points)
            axes.errorbar(x, y, yerr=error, marker="o", capsize=3, label=label)
    axes.set_xscale("log")
    axes.set_xticks(fractions, [f"{f:g}%" for f in fractions])
    axes.set_xlabel("labelled training images")
    axes.set_ylabel("top-1 accuracy (%)")
    axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    if cells:
        axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)


def plot_knn(history, path, title):
    """The k-NN monitor's top-1 (%) against the pretraining step."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(5.5, 3.5))
    steps, values = zip(*history)
    axes.plot(steps, [100 * v for v in values], marker="o")
    axes.set_xlabel("pretraining step")
    axes.set_ylabel("k-NN top-1 (%)")
    axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)
