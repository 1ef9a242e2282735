"""Linear evaluation (appendix B), three ways.

    python -m cpc_tf.linear_eval --flagfile=flags/linear_demo.cfg \
        --pretrained_dir=runs/demo --model_dir=runs/demo_linear

The pretrained encoder (`encoder.keras` of `--pretrained_dir`: the
Polyak-averaged weights) is frozen; `--random_init` gives the same
architecture with fresh random weights, the baseline. The patch geometry
is the pretraining run's; testing uses its centre crop.

- `--probe=augmented` (the paper's): the head (BatchNormalization without
  scale, a 1x1 convolution to the class logits, the spatial mean of the
  logits) trains with Adam on streamed patch grids through the pretraining
  pipeline (random crop, per-patch augmentation), keeping the weights of
  its best validation evaluation.
- `--probe=cached`: every image is embedded once and the same head trains
  on the mean-pooled features to convergence, its L2 strength and epochs
  chosen on the validation images (`--probe_*`; `--probe_features=pixels`
  gives the raw-pixel floor).
- `--probe=knn`: the weighted k-NN classifier of the features (`--knn_*`),
  e.g. to score a finished pretraining run.

`model_dir` receives `classifier.keras` (patch grids -> logits),
`results.json` and, for the streamed probe, checkpoints and TensorBoard
logs.
"""

import dataclasses
import os

import tensorflow as tf

from cpc_tf import evaluation
from cpc_tf.config import DataConfig, KnnConfig, OptimConfig, RunConfig
from cpc_tf.config import flags as cpc_flags
from cpc_tf.evaluation import cached
from cpc_tf.evaluation.results import test_set_name
from cpc_tf.protocols import runtime
from cpc_tf.rundir import artifacts, splits
from cpc_tf.training import builders, distribute
from cpc_tf.training.optimizers import l2_strength, make_optimizer

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


def _streamed(strategy, config, encoder, num_classes, split, verbose):
    """The appendix-B probe on augmented patch grids; `(loop, summary,
    selection, model, inputs)`."""
    data, run_config = config.data, config.run
    inputs = evaluation.Inputs(
        data, patches=True, augment=config.options.augment
    )
    steps = builders.total_steps(run_config, split.num_train)
    with strategy.scope():
        head = evaluation.linear_head(encoder.output_shape[1:], num_classes)
        model = evaluation.classifier(
            encoder, head, inputs.shape, name="linear_classifier"
        )
        optimizer = make_optimizer(
            config.optim, steps, run_config.mixed_precision
        )
    task = evaluation.ClassifierTask(
        model, encoder, head, optimizer, l2=l2_strength(config.optim)
    )
    loop, summary, selection = evaluation.train(
        strategy, task, config, steps, inputs, split, verbose=verbose
    )
    return loop, summary, selection, model, inputs


def _features(strategy, config, encoder):
    """`(Inputs, encoder)` of the cached probe: patch grids through the
    frozen encoder, or whole images through a flatten (pixels)."""
    data, options = config.data, config.options
    if options.probe_features == "pixels":
        inputs = evaluation.Inputs(data, patches=False, augment=False)
        with strategy.scope():
            encoder = cached.pixel_encoder(inputs.shape)
        return inputs, encoder
    return evaluation.Inputs(data, patches=True, augment=False), encoder


def _cache(config, strategy, is_chief):
    """The feature cache of the encoder, or None (pixels, multi-worker)."""
    options = config.options
    workers = distribute.cluster_task(strategy)[3]
    if not options.probe_cache or options.probe_features == "pixels":
        return None
    if workers > 1:
        return None
    if options.random_init:
        key = f"random_init-seed{config.run.seed}"
    else:
        path = os.path.join(options.pretrained_dir, artifacts.ENCODER_FILE)
        stat = tf.io.gfile.stat(path)
        key = f"pretrained-{stat.length}-{stat.mtime_nsec}"
    key += f"-{config.run.mixed_precision}"
    return options.pretrained_dir, key, is_chief


def run(config, strategy=None, test=True, verbose=True, explicit=()):
    """Trains and tests the probe; returns the results dict.

    Args:
        config: a `evaluation.LinearEvalConfig`.
        strategy: a `tf.distribute` strategy (default: `--strategy`).
        test: evaluate on `--eval_data`.
        verbose: progress bar.
        explicit: geometry flags given on the command line (checked
            against the pretraining run's).
    """
    options, run_config = config.options, config.run
    pixels = options.probe_features == "pixels"
    pretrained = evaluation.read_pretrained(
        options.pretrained_dir,
        artifacts.ENCODER_FILE,
        options.random_init or pixels,
    )
    data = evaluation.pretrained_geometry(
        config.data, pretrained.data, explicit
    )
    config = dataclasses.replace(config, data=data)
    num_classes = evaluation.num_classes(data)
    model_dir = runtime.prepare_model_dir(run_config.model_dir)
    is_chief = distribute.cluster_task(strategy)[2]
    split = splits.label_split(
        data, run_config.seed, data.subset_dir or model_dir, write=is_chief
    )
    extra = dict(
        evaluation.pretrained_results("linear", options),
        probe_kind=options.probe,
        probe_features=options.probe_features,
    )
    pretrain_summary = evaluation.read_pretrain_summary(options.pretrained_dir)
    with runtime.session(run_config, strategy) as strategy:
        with strategy.scope():
            encoder = evaluation.load_patch_encoder(
                options.pretrained_dir,
                pretrained,
                options.random_init or pixels,
            )
        if options.probe == "augmented":
            loop, summary, selection, model, inputs = _streamed(
                strategy, config, encoder, num_classes, split, verbose
            )
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
        inputs, encoder = _features(strategy, config, encoder)
        view_inputs = dataclasses.replace(inputs, augment=options.augment)
        embedded = cached.embed(
            strategy,
            encoder,
            inputs,
            view_inputs,
            split,
            options,
            run_config.seed,
            cache=_cache(config, strategy, is_chief),
        )
        head, scores = cached.score(
            options.probe,
            embedded,
            num_classes,
            options,
            config.knn,
            run_config.seed,
        )
    return _write_cached(
        config, split, encoder, head, inputs, scores, extra, pretrain_summary
    )


def _write_cached(
    config, split, encoder, head, inputs, scores, extra, pretrain_summary
):
    data, model_dir = config.data, config.run.model_dir
    path = None
    is_chief = distribute.cluster_task()[2]
    if head is not None:
        path = os.path.join(model_dir, evaluation.CLASSIFIER_FILE)
        if is_chief:
            cached.whole_classifier(encoder, head, inputs.shape).save(path)
    results = dict(
        scores,
        label_fraction=data.label_fraction,
        labelled_examples=split.num_train,
        holdout=data.holdout,
        test_set=test_set_name(data, scores["test"]),
        test_excluded_from_pretraining=splits.test_excluded_from_pretraining(
            split, data, pretrain_summary
        ),
        subset_files=split.files,
        num_classes=int(head.output_shape[-1]) if head is not None else None,
        steps=0,
        classifier=path,
        model_dir=model_dir,
        config=config.to_dict(),
        **extra,
    )
    if is_chief:
        evaluation.write_results(model_dir, results)
    return results


def parse_config(flag_values):
    """`(LinearEvalConfig, geometry flags given)` of parsed flags."""
    config = cpc_flags.config_from_flags(
        evaluation.LinearEvalConfig, flag_values
    )
    return config, cpc_flags.geometry_given(flag_values)


def run_from_flags(flag_values, verbose=True):
    """`run` on parsed flags (the entry point and the report's stages)."""
    config, explicit = parse_config(flag_values)
    return run(config, verbose=verbose, explicit=explicit)


def define_flags(flag_values):
    """Defines this entry point's flags with its defaults."""
    cpc_flags.define_protocol_flags(
        flag_values,
        FLAG_DEFAULTS,
        DataConfig,
        OptimConfig,
        RunConfig,
        evaluation.ProbeOptions,
        KnnConfig,
    )
