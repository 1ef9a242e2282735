"""Semi-supervised fine-tuning with CPC features (appendix C.2).

    python -m cpc_tf.finetune --flagfile=flags/finetune_demo.cfg

The pretrained encoder (`backbone.keras` of `--pretrained_dir`, the
Polyak-averaged weights; `--random_init` for fresh weights) runs on the
whole image (`--image_size`; 224 gives ResNet-161's 14x14 grid) and feeds
a residual classifier: `--classifier_blocks` bottleneck blocks of width
`--classifier_hidden` and inner width `--classifier_bottleneck`, the mean
pool, dropout and a linear layer. The data pipeline is the supervised
baseline's (Inception crop, augmentation steps 1-4).

Phase 1 (`--phase1_epochs` of the labelled subset, in `model_dir/phase1`)
trains the classifier on frozen features with `--optimizer` (SGD, cosine
schedule). Phase 2 (`--phase2_epochs`, in `model_dir/phase2`) starts from
phase 1's best validation point and fine-tunes everything in one train
step with two optimizers on disjoint variables: the classifier with a
fresh `--optimizer`, the encoder with Adam at `--encoder_learning_rate`
(betas and epsilon of the pretraining run); each group's gradient is
clipped on its own when `--clip_global_norm` is set. Each phase keeps its
best validation evaluation, checkpoints and resumes on its own; the test
scores the better of the two phases' best evaluations.
`--search` (with validation images) searches the classifier's
hyperparameters as `cpc_tf.supervised` does, each trial being phase 1
only (the classifier on frozen features); the best trial's classifier then
goes through phase 2. See `cpc_tf.supervised` for the distributed search.

`model_dir` receives `classifier.keras` (images `[B, S, S, 3]` -> logits)
and `results.json`.
"""

import dataclasses
import math
import os

import keras

from cpc_tf import evaluation
from cpc_tf.config import DataConfig, OptimConfig, RunConfig
from cpc_tf.config import flags as cpc_flags
from cpc_tf.evaluation import search
from cpc_tf.protocols import runtime
from cpc_tf.rundir import artifacts, splits
from cpc_tf.training import distribute
from cpc_tf.training.optimizers import l2_strength, make_optimizer

# This protocol's defaults for the shared flags (appendix C.2).
FLAG_DEFAULTS = dict(
    optimizer="sgd",
    learning_rate=0.1,
    beta1=0.9,
    weight_decay=1e-4,
    clip_global_norm=0.0,
    ema_decay=0.0,
    lr_schedule="cosine",
    image_size=224,
    batch_size=512,
    model_dir="runs/finetune",
)


def encoder_optim(config, pretrained):
    """Phase 2's encoder optimizer: the pretraining Adam, this run's rate."""
    return dataclasses.replace(
        pretrained.optim,
        optimizer="adam",
        learning_rate=config.options.encoder_learning_rate,
        weight_decay=0.0,
        lr_schedule=config.optim.lr_schedule,
        warmup_steps=config.optim.warmup_steps,
    )


def phase_steps(config, phase, num_train):
    """Steps of phase 1 or 2: `--phaseN_steps`, else `--phaseN_epochs` of
    the labelled subset, at least `--min_steps` (0: the phase is off)."""
    options, run = config.options, config.run
    steps = getattr(options, f"phase{phase}_steps")
    epochs = getattr(options, f"phase{phase}_epochs")
    if steps or not epochs:
        return steps
    if not num_train:
        raise evaluation.FlagError(
            f"--phase{phase}_epochs needs the number of training examples, "
            f"which this source does not report; set --phase{phase}_steps."
        )
    return max(1, run.min_steps, math.ceil(epochs * num_train / run.batch_size))


def best_selection(selections):
    """`(phase name, BestCheckpoint)` of the highest validation top-1 of
    `{phase name: BestCheckpoint or None}` (the later phase on a tie), or
    `(None, None)` when no phase evaluated."""
    scored = [
        (name, selection)
        for name, selection in selections.items()
        if selection is not None and selection.record()
    ]
    if not scored:
        return None, None
    return max(reversed(scored), key=lambda item: item[1].record()["val_top1"])


def build_model(config, pretrained, num_classes):
    """`(classifier, backbone, head)` for a `FinetuneConfig`."""
    options, size = config.options, config.data.image_size
    backbone = evaluation.load_backbone(
        options.pretrained_dir, pretrained, options.random_init
    )
    feature_shape = backbone.compute_output_shape((None, size, size, 3))[1:]
    head = evaluation.classifier_head(
        feature_shape,
        num_classes,
        dropout=options.dropout,
        blocks=options.classifier_blocks,
        hidden=options.classifier_hidden,
        bottleneck=options.classifier_bottleneck,
    )
    model = evaluation.classifier(
        backbone, head, (size, size, 3), name="finetune_classifier"
    )
    return model, backbone, head


def _phase_one_only(config):
    options = dataclasses.replace(
        config.options, phase2_steps=0, phase2_epochs=0.0
    )
    return dataclasses.replace(config, options=options)


def _search_phase_one(config, strategy, inputs, verbose):
    """Appendix C.2's search: trials train the classifier on frozen
    features (phase 1), scored on validation; the best trial's
    hyperparameters and weights go on to phase 2. Returns `(config with
    the best values, search record)` or `(None, None)` in a worker."""
    record = search.search_best(_phase_one_only(config), run, strategy, verbose)
    if record is None:
        return None, None
    best = evaluation.with_hyperparameters(
        config,
        record["best_values"],
        strategy.num_replicas_in_sync,
        config.run.model_dir,
    )
    return best, record


def run(config, strategy=None, test=True, verbose=True):
    """Runs both phases and tests (or searches, with `--search`).

    Args:
        config: a `evaluation.FinetuneConfig`.
        strategy: a `tf.distribute` strategy (default: `--strategy`).
        test: evaluate on the test set.
        verbose: progress bars.

    Returns:
        The results dict (None in a distributed search's worker).
    """
    options, run_config, data = config.options, config.run, config.data
    pretrained = evaluation.read_pretrained(
        options.pretrained_dir, artifacts.BACKBONE_FILE, options.random_init
    )
    num_classes = evaluation.num_classes(data)
    model_dir = runtime.prepare_model_dir(run_config.model_dir)
    is_chief = distribute.cluster_task(strategy)[2]
    pretrain_summary = evaluation.read_pretrain_summary(options.pretrained_dir)
    inputs = evaluation.Inputs(data, patches=False, augment=options.augment)
    with runtime.session(run_config, strategy) as strategy:
        search_record = None
        if config.search.search:
            config, search_record = _search_phase_one(
                config, strategy, inputs, verbose
            )
            if config is None:
                return None
            options = config.options
        split = splits.label_split(
            data, run_config.seed, data.subset_dir or model_dir, write=is_chief
        )
        phase1 = phase_steps(config, 1, split.num_train)
        phase2 = phase_steps(config, 2, split.num_train)
        if search_record is not None:
            phase1 = 0
        summary = dict(steps=phase1 + phase2)

        def train_phase(task, steps, name, step_offset):
            return evaluation.train(
                strategy,
                task,
                config,
                steps,
                inputs,
                split,
                model_dir=os.path.join(model_dir, name),
                step_offset=step_offset,
                verbose=verbose,
            )

        with strategy.scope():
            model, backbone, head = build_model(config, pretrained, num_classes)
        if search_record is not None:
            best = keras.saving.load_model(
                os.path.join(
                    search_record["best_dir"], evaluation.CLASSIFIER_FILE
                ),
                compile=False,
            )
            model.set_weights(best.get_weights())
        l2 = l2_strength(config.optim)
        precision = config.run.mixed_precision
        selections = {}
        if phase1:
            with strategy.scope():
                optimizer = make_optimizer(config.optim, phase1, precision)
            task = evaluation.ClassifierTask(
                model, backbone, head, optimizer, l2=l2
            )
            loop, summary["phase1"], selection = train_phase(
                task, phase1, "phase1", 0
            )
            selections["phase1"] = selection
            if phase2 and selection is not None:
                selection.restore()
        if phase2:
            with strategy.scope():
                optimizer = make_optimizer(config.optim, phase2, precision)
                encoder_optimizer = make_optimizer(
                    encoder_optim(config, pretrained), phase2, precision
                )
            task = evaluation.ClassifierTask(
                model,
                backbone,
                head,
                optimizer,
                train_encoder=True,
                encoder_optimizer=encoder_optimizer,
                l2=l2,
            )
            loop, summary["phase2"], selection = train_phase(
                task, phase2, "phase2", phase1
            )
            selections["phase2"] = selection
        selected_phase, selection = best_selection(selections)
        extra = evaluation.pretrained_results("finetune", options)
        extra["selected_phase"] = selected_phase
        if search_record is not None:
            extra["search"] = search_record
        return evaluation.finish(
            loop,
            model,
            inputs=inputs,
            config=config,
            split=split,
            train_summary=summary,
            extra=extra,
            test=test,
            selection=selection,
            pretrain_summary=pretrain_summary,
        )


def parse_config(flag_values):
    """The config of parsed flags (a bad one raises `FlagError`)."""
    return cpc_flags.whole_image_config(
        flag_values, "finetune", evaluation.FinetuneConfig
    )


def run_from_flags(flag_values, verbose=True):
    """`run` on parsed flags (the entry point and the report's stages)."""
    return run(parse_config(flag_values), verbose=verbose)


def define_flags(flag_values):
    """Defines this entry point's flags with its defaults."""
    cpc_flags.define_protocol_flags(
        flag_values,
        FLAG_DEFAULTS,
        DataConfig,
        OptimConfig,
        RunConfig,
        evaluation.FinetuneOptions,
        evaluation.SearchConfig,
    )
