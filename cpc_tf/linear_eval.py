"""Linear evaluation (appendix B).

    python -m cpc_tf.linear_eval --flagfile=flags/linear_demo.cfg \
        --pretrained_dir=runs/demo --model_dir=runs/demo_linear

The pretrained encoder (`encoder.keras` of `--pretrained_dir`: the
Polyak-averaged weights) is frozen; `--random_init` gives the same
architecture with fresh random weights, the baseline. Training data goes
through the pretraining pipeline (random crop, per-patch augmentation;
`--augment=false` turns the augmentation off), testing through its centre
crop; the patch geometry is the pretraining run's. The head is
BatchNormalization without scale, a 1x1 convolution to the class logits
and the spatial mean of the logits, trained with Adam (5e-4 by default).
`model_dir` receives checkpoints, TensorBoard logs, `classifier.keras`
(patch grids -> logits) and `results.json`.
"""

import dataclasses
import os

import keras
from absl import app

from cpc_tf import artifacts, distribute, evaluation
from cpc_tf import flags as cpc_flags
from cpc_tf.config import DataConfig, OptimConfig, RunConfig
from cpc_tf.optimizers import make_optimizer
from cpc_tf.pretrain import total_steps

# This protocol's defaults for the shared flags (appendix B).
FLAG_DEFAULTS = dict(
    optimizer="adam",
    learning_rate=5e-4,
    beta1=0.9,
    clip_global_norm=0.0,
    ema_decay=0.0,
    batch_size=512,
    epochs=100.0,
    model_dir="runs/linear",
)


def run(config, strategy=None, test=True, verbose=True, explicit=()):
    """Trains and tests the linear probe; returns the results dict.

    Args:
        config: a `evaluation.LinearEvalConfig`.
        strategy: a `tf.distribute` strategy (default: `--strategy`).
        test: evaluate on `--eval_data`.
        verbose: progress bar.
        explicit: geometry flags given on the command line (checked
            against the pretraining run's).
    """
    options, run_config = config.options, config.run
    pretrained = evaluation.read_pretrained(
        options.pretrained_dir, artifacts.ENCODER_FILE, options.random_init
    )
    data = evaluation.pretrained_geometry(
        config.data, pretrained.data, explicit
    )
    config = dataclasses.replace(config, data=data)
    num_classes = evaluation.num_classes(data)
    if strategy is None:
        strategy = distribute.make_strategy(run_config.strategy, run_config.tpu)
    distribute.check_batch_size(strategy, run_config.batch_size)
    os.makedirs(run_config.model_dir, exist_ok=True)
    split = evaluation.label_split(
        data, run_config.seed, data.subset_dir or run_config.model_dir
    )
    steps = total_steps(run_config, split.num_train)
    inputs = evaluation.Inputs(data, patches=True, augment=options.augment)
    keras.utils.set_random_seed(run_config.seed)
    keras.mixed_precision.set_dtype_policy(
        "mixed_bfloat16" if run_config.mixed_precision else "float32"
    )
    try:
        with strategy.scope():
            encoder = evaluation.load_patch_encoder(
                options.pretrained_dir, pretrained, options.random_init
            )
            head = evaluation.linear_head(encoder.output_shape[1:], num_classes)
            model = evaluation.classifier(
                encoder, head, inputs.shape, name="linear_classifier"
            )
            optimizer = make_optimizer(config.optim, steps)
        task = evaluation.ClassifierTask(model, encoder, head, optimizer)
        loop, summary = evaluation.train(
            strategy,
            task,
            config,
            steps,
            inputs,
            split.train_ids,
            verbose=verbose,
        )
        return evaluation.finish(
            loop,
            strategy,
            model,
            inputs,
            config,
            split,
            summary,
            evaluation.pretrained_results("linear", options),
            test=test,
        )
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


def parse_config(flag_values=cpc_flags.FLAGS):
    """`(LinearEvalConfig, geometry flags given)` of parsed flags."""
    config = cpc_flags.config_from_flags(
        evaluation.LinearEvalConfig, flag_values
    )
    explicit = [
        name for name in evaluation.GEOMETRY_FLAGS if flag_values[name].present
    ]
    return config, explicit


def main(argv):
    del argv
    config, explicit = parse_config()
    evaluation.run_main(run, config, explicit=explicit)


def define_flags(flag_values=cpc_flags.FLAGS):
    """Defines this entry point's flags with its defaults."""
    evaluation.define_protocol_flags(
        flag_values,
        FLAG_DEFAULTS,
        DataConfig,
        OptimConfig,
        RunConfig,
        evaluation.LinearOptions,
    )


if __name__ == "__main__":
    define_flags()
    app.run(main)
