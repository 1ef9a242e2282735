"""The finished stages' results: records, mean ± std per cell, the
readout, the markdown table and the test-set statement."""

import os

import numpy as np

from cpc_tf.reporting.planning import (
    CPC_METHODS,
    METHODS,
    RESULTS_FILE,
    stage_done,
)
from cpc_tf.rundir import artifacts


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
