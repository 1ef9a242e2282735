"""The purely supervised baseline (appendix C.1).

    python -m cpc_tf.supervised --flagfile=flags/supervised_demo.cfg

A ResNet-v2 (`--encoder_depth` 50, 101, 152 or 200, batch normalization;
`--encoder_depth=0` with the custom-encoder flags for a small one) with
global average pooling, dropout and a linear classifier, trained with SGD
(momentum `--beta1`, the L2 penalty `--weight_decay` on kernels, cosine
schedule) for `--epochs` of the labelled subset (at least `--min_steps`)
on Inception random-sized crops of `--image_size` followed by
augmentation steps 1-4 on the whole image. Evaluation resizes and
centre-crops. The patch flags do not apply. The weights of the best
validation evaluation (every `--eval_every` steps) are the ones tested.

With `--search` (needs validation images), keras-tuner searches learning
rate `--search_learning_rates`, weight decay (log-uniform in
`--search_weight_decay`), dropout (`--search_dropout`) and per-worker
batch (`--search_batch_sizes`) for `--search_trials` trials; each trial is
a whole training run in `model_dir/search/trial_<id>/`, scored by its
top-1 on the validation images. The best trial's classifier is then
tested once. An interrupted search resumes. Run a label fraction per
`model_dir`, as the paper searched per fraction.

Scaling the search out: keras-tuner's distributed mode. Start the same
command (same `model_dir` on a shared file system) in several processes
with `KERASTUNER_ORACLE_IP` and `KERASTUNER_ORACLE_PORT` set to one
address; the process with `KERASTUNER_TUNER_ID=chief` serves the oracle
and tests the best trial when the search ends, the others
(`KERASTUNER_TUNER_ID=tuner0`, `tuner1`, ...) each run trials, each with
its own `--strategy` (e.g. one accelerator per tuner).

`model_dir` receives checkpoints, TensorBoard logs, `classifier.keras`
(images `[B, S, S, 3]` -> logits) and `results.json`.
"""

from cpc_tf import evaluation
from cpc_tf.config import DataConfig, ModelConfig, OptimConfig, RunConfig
from cpc_tf.config import flags as cpc_flags
from cpc_tf.protocols import runtime
from cpc_tf.rundir import splits
from cpc_tf.training import builders, distribute
from cpc_tf.training.optimizers import l2_strength, make_optimizer

# This protocol's defaults for the shared flags (appendix C.1).
FLAG_DEFAULTS = dict(
    encoder_depth=50,
    norm="batch",
    optimizer="sgd",
    learning_rate=0.1,
    beta1=0.9,
    weight_decay=1e-4,
    clip_global_norm=0.0,
    ema_decay=0.0,
    lr_schedule="cosine",
    image_size=224,
    batch_size=512,
    epochs=90.0,
    model_dir="runs/supervised",
)


def build_model(config, num_classes):
    """`(classifier, backbone, head)` for a `SupervisedConfig`."""
    size = config.data.image_size
    backbone = builders.build_backbone(config.model)
    feature_shape = backbone.compute_output_shape((None, size, size, 3))[1:]
    head = evaluation.classifier_head(
        feature_shape, num_classes, dropout=config.options.dropout
    )
    model = evaluation.classifier(
        backbone, head, (size, size, 3), name="supervised_classifier"
    )
    return model, backbone, head


def run(config, strategy=None, test=True, verbose=True):
    """Trains and tests the baseline (or searches, with `--search`).

    Trains for `--epochs` of the labelled subset (at least `--min_steps`
    steps, or exactly `--steps`) and tests the weights of the best
    validation evaluation when there are validation images.

    Args:
        config: a `evaluation.SupervisedConfig`.
        strategy: a `tf.distribute` strategy (default: `--strategy`).
        test: evaluate on the test set.
        verbose: progress bar.

    Returns:
        The results dict (None in a distributed search's worker).
    """
    run_config, data = config.run, config.data
    num_classes = evaluation.num_classes(data)
    model_dir = runtime.prepare_model_dir(run_config.model_dir)
    is_chief = distribute.cluster_task(strategy)[2]
    with runtime.session(run_config, strategy) as strategy:
        if config.search.search:
            return evaluation.search_and_test(
                config,
                run,
                strategy,
                evaluation.Inputs(data, patches=False),
                verbose,
            )
        split = splits.label_split(
            data, run_config.seed, data.subset_dir or model_dir, write=is_chief
        )
        steps = builders.total_steps(run_config, split.num_train)
        inputs = evaluation.Inputs(
            data, patches=False, augment=config.options.augment
        )
        with strategy.scope():
            model, backbone, head = build_model(config, num_classes)
            optimizer = make_optimizer(
                config.optim, steps, run_config.mixed_precision
            )
        task = evaluation.ClassifierTask(
            model,
            backbone,
            head,
            optimizer,
            train_encoder=True,
            l2=l2_strength(config.optim),
        )
        loop, summary, selection = evaluation.train(
            strategy, task, config, steps, inputs, split, verbose=verbose
        )
        return evaluation.finish(
            loop,
            model,
            inputs=inputs,
            config=config,
            split=split,
            train_summary=summary,
            extra=dict(protocol="supervised", parameters=model.count_params()),
            test=test,
            selection=selection,
        )


def parse_config(flag_values):
    """The config of parsed flags (a bad one raises `FlagError`)."""
    return cpc_flags.whole_image_config(
        flag_values, "supervised", evaluation.SupervisedConfig
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
        ModelConfig,
        OptimConfig,
        RunConfig,
        evaluation.SupervisedOptions,
        evaluation.SearchConfig,
    )
