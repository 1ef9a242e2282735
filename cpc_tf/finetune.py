"""Semi-supervised fine-tuning with CPC features (appendix C.2).

    python -m cpc_tf.finetune --flagfile=flags/finetune_demo.cfg

The pretrained encoder (`backbone.keras` of `--pretrained_dir`, the
Polyak-averaged weights; `--random_init` for fresh weights) runs on the
whole image (`--image_size`; 224 gives ResNet-161's 14x14 grid) and feeds
a residual classifier: `--classifier_blocks` bottleneck blocks of width
`--classifier_hidden` and inner width `--classifier_bottleneck`, the mean
pool, dropout and a linear layer. The data pipeline is the supervised
baseline's (Inception crop, augmentation steps 1-4).

Phase 1 (`--phase1_steps`, in `model_dir/phase1`) trains the classifier
on frozen features with `--optimizer` (SGD by default). Phase 2
(`--phase2_steps`, in `model_dir/phase2`) fine-tunes everything in one
train step with two optimizers on disjoint variables: the classifier with
a fresh `--optimizer`, the encoder with Adam at `--encoder_learning_rate`
(betas and epsilon of the pretraining run). Each phase checkpoints and
resumes on its own. `--search` (with `--holdout`) searches the
classifier's hyperparameters as `cpc_tf.supervised` does, each trial
being both phases; see that module for the distributed search.

`model_dir` receives `classifier.keras` (images `[B, S, S, 3]` -> logits)
and `results.json`.
"""

import dataclasses
import os

import keras
from absl import app

from cpc_tf import artifacts, distribute, evaluation
from cpc_tf import flags as cpc_flags
from cpc_tf.config import DataConfig, OptimConfig, RunConfig
from cpc_tf.optimizers import make_optimizer

# This protocol's defaults for the shared flags (appendix C.2).
FLAG_DEFAULTS = dict(
    optimizer="sgd",
    learning_rate=0.1,
    beta1=0.9,
    weight_decay=1e-4,
    clip_global_norm=0.0,
    ema_decay=0.0,
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


def run(config, strategy=None, test=True, verbose=True):
    """Runs both phases and tests (or searches, with `--search`).

    Args:
        config: a `evaluation.FinetuneConfig`.
        strategy: a `tf.distribute` strategy (default: `--strategy`).
        test: evaluate on `--eval_data`.
        verbose: progress bars.

    Returns:
        The results dict (None in a distributed search's worker).
    """
    options, run_config, data = config.options, config.run, config.data
    pretrained = evaluation.read_pretrained(
        options.pretrained_dir, artifacts.BACKBONE_FILE, options.random_init
    )
    num_classes = evaluation.num_classes(data)
    if strategy is None:
        strategy = distribute.make_strategy(run_config.strategy, run_config.tpu)
    distribute.check_batch_size(strategy, run_config.batch_size)
    os.makedirs(run_config.model_dir, exist_ok=True)
    inputs = evaluation.Inputs(data, patches=False, augment=options.augment)
    if config.search.search:
        return evaluation.search_and_test(
            config, run, strategy, inputs, verbose
        )
    split = evaluation.label_split(
        data, run_config.seed, data.subset_dir or run_config.model_dir
    )

    def train_phase(task, steps, name, step_offset):
        return evaluation.train(
            strategy,
            task,
            config,
            steps,
            inputs,
            split.train_ids,
            model_dir=os.path.join(run_config.model_dir, name),
            step_offset=step_offset,
            verbose=verbose,
        )

    keras.utils.set_random_seed(run_config.seed)
    keras.mixed_precision.set_dtype_policy(
        "mixed_bfloat16" if run_config.mixed_precision else "float32"
    )
    summary = dict(steps=options.phase1_steps + options.phase2_steps)
    try:
        with strategy.scope():
            model, backbone, head = build_model(config, pretrained, num_classes)
        if options.phase1_steps:
            with strategy.scope():
                optimizer = make_optimizer(config.optim, options.phase1_steps)
            task = evaluation.ClassifierTask(model, backbone, head, optimizer)
            loop, summary["phase1"] = train_phase(
                task, options.phase1_steps, "phase1", 0
            )
        if options.phase2_steps:
            with strategy.scope():
                optimizer = make_optimizer(config.optim, options.phase2_steps)
                encoder_optimizer = make_optimizer(
                    encoder_optim(config, pretrained), options.phase2_steps
                )
            task = evaluation.ClassifierTask(
                model,
                backbone,
                head,
                optimizer,
                train_encoder=True,
                encoder_optimizer=encoder_optimizer,
            )
            loop, summary["phase2"] = train_phase(
                task, options.phase2_steps, "phase2", options.phase1_steps
            )
        return evaluation.finish(
            loop,
            strategy,
            model,
            inputs,
            config,
            split,
            summary,
            evaluation.pretrained_results("finetune", options),
            test=test,
        )
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


def parse_config(flag_values=cpc_flags.FLAGS):
    """The config of parsed flags; a bad flag raises `app.UsageError`."""
    return evaluation.parse_whole_image_config(
        flag_values, "finetune", evaluation.FinetuneConfig
    )


def main(argv):
    del argv
    evaluation.run_main(run, parse_config())


def define_flags(flag_values=cpc_flags.FLAGS):
    """Defines this entry point's flags with its defaults."""
    evaluation.define_protocol_flags(
        flag_values,
        FLAG_DEFAULTS,
        DataConfig,
        OptimConfig,
        RunConfig,
        evaluation.FinetuneOptions,
        evaluation.SearchConfig,
    )


if __name__ == "__main__":
    define_flags()
    app.run(main)
