"""The report's stages: which entry point runs with which flags, in which
directory, after which stage, and whether it has finished."""

import dataclasses
import os

from cpc_tf.config import ENCODER_SHAPE_FIELDS
from cpc_tf.rundir import artifacts

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
RESULTS_FILE = artifacts.RESULTS_FILE


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
    """One run of a protocol (`protocols.registry`) with its arguments."""

    name: str
    method: str
    fraction: float
    seed: int
    protocol: str
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
            "pretrain",
            (
                f"--flagfile={os.path.join(report_dir, 'pretrain.cfg')}",
                f"--model_dir={pretrain_dir}",
            ),
        )
    ]
    pixels = ["--probe=cached", "--probe_features=pixels"]
    protocols = dict(
        linear_cpc=("linear_eval", []),
        linear_random=("linear_eval", ["--random_init"]),
        finetune=("finetune", whole_image),
        supervised=("supervised", encoder_shape + whole_image),
        pixels=("linear_eval", pixels),
    )
    if methods is not None:
        protocols = {k: v for k, v in protocols.items() if k in methods}
    for fraction in fractions:
        for offset in range(seeds):
            seed = config.run.seed + offset
            for method, (protocol, extra) in protocols.items():
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
                        protocol,
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


def stage_record_path(stage):
    """The file whose presence says `stage` finished."""
    name = (
        RESULTS_FILE if stage.method != "pretrain" else artifacts.SUMMARY_FILE
    )
    return os.path.join(stage.directory, name)


def stage_done(stage):
    """Whether `stage` finished: its record exists and reads back whole
    (a damaged `results.json` or `summary.json` is re-run, not trusted)."""
    path = stage_record_path(stage)
    return artifacts.finished(os.path.dirname(path), (os.path.basename(path),))
