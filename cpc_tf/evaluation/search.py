"""The hyperparameter search of appendix C.1 with keras-tuner.

A trial is one protocol run with the shared trainer, in
`model_dir/search/trial_<id>/`, scored by its top-1 on the validation
images; the best trial is then tested once. An interrupted search found
in `model_dir/search/` resumes. keras-tuner's distributed mode scales it
out (see `cpc_tf.supervised`).
"""

import dataclasses
import os

import keras
import keras_tuner
import tensorflow as tf

from cpc_tf.evaluation import inputs as inputs_lib
from cpc_tf.evaluation import results as results_lib
from cpc_tf.rundir import splits

SEARCH_DIR = "search"
OBJECTIVE = "val_top1"


def search_space(search):
    """The `keras_tuner.HyperParameters` of appendix C.1."""
    hp = keras_tuner.HyperParameters()
    hp.Choice("learning_rate", [float(v) for v in search.search_learning_rates])
    hp.Float("weight_decay", *search.search_weight_decay, sampling="log")
    hp.Float("dropout", *search.search_dropout)
    hp.Choice("batch_per_worker", [int(v) for v in search.search_batch_sizes])
    return hp


def with_hyperparameters(config, values, replicas, model_dir):
    """`config` with a trial's values, training into `model_dir`.

    The global batch is the per-worker batch times `replicas`; label
    subsets stay where the search run keeps them.
    """
    run = config.run
    return dataclasses.replace(
        config,
        optim=dataclasses.replace(
            config.optim,
            learning_rate=values["learning_rate"],
            weight_decay=values["weight_decay"],
        ),
        options=dataclasses.replace(config.options, dropout=values["dropout"]),
        run=dataclasses.replace(
            run,
            model_dir=model_dir,
            batch_size=values["batch_per_worker"] * replicas,
        ),
        data=dataclasses.replace(
            config.data, subset_dir=config.data.subset_dir or run.model_dir
        ),
        search=dataclasses.replace(config.search, search=False),
    )


class ProtocolTuner(keras_tuner.Tuner):
    """A keras-tuner `Tuner` whose trial is one call of `trial_fn`.

    Args:
        oracle: a `keras_tuner.Oracle` with objective `val_top1`.
        trial_fn: `(hyperparameter values, trial_dir) -> validation top-1`.
        **kwargs: for `keras_tuner.Tuner` (directory, project_name,
            distribution_strategy, ...).
    """

    def __init__(self, oracle, trial_fn, **kwargs):
        super().__init__(oracle, **kwargs)
        self.trial_fn = trial_fn

    def run_trial(self, trial, *args, **kwargs):
        trial_dir = self.get_trial_dir(trial.trial_id)
        return {
            OBJECTIVE: self.trial_fn(trial.hyperparameters.values, trial_dir)
        }


def make_oracle(search, seed):
    """The oracle of `search.search_algorithm` over `search_space`."""
    kwargs = dict(
        objective=keras_tuner.Objective(OBJECTIVE, direction="max"),
        max_trials=search.search_trials,
        hyperparameters=search_space(search),
        tune_new_entries=False,
        allow_new_entries=False,
        seed=seed,
    )
    if search.search_algorithm == "bayesian":
        return keras_tuner.oracles.BayesianOptimizationOracle(**kwargs)
    return keras_tuner.oracles.RandomSearchOracle(**kwargs)


def is_tuner_worker():
    """True in a distributed search's worker (it runs trials only).

    keras-tuner's distributed mode: every process sets
    `KERASTUNER_ORACLE_IP` and `KERASTUNER_ORACLE_PORT`; the chief has
    `KERASTUNER_TUNER_ID=chief`, workers any other id.
    """
    return "KERASTUNER_ORACLE_IP" in os.environ and "chief" not in (
        os.environ.get("KERASTUNER_TUNER_ID", "")
    )


def run_search(search, trial_fn, directory, seed, strategy=None):
    """Runs the search; returns the tuner (its oracle holds the trials).

    The tuner's state and the trials go to `directory/search/`; an
    interrupted search found there resumes.
    """
    tuner = ProtocolTuner(
        make_oracle(search, seed),
        trial_fn,
        directory=directory,
        project_name=SEARCH_DIR,
        distribution_strategy=strategy,
    )
    tuner.search()
    return tuner


def search_best(config, run_fn, strategy, verbose=True):
    """Runs the search; returns the best trial's record, or None in a
    distributed search's worker.

    Each trial is `run_fn(trial_config, strategy=..., test=False)` in
    `model_dir/search/trial_<id>/`, scored by its validation top-1.

    Returns:
        `{"best_trial", "best_values", "best_dir", "trials"}`.
    """
    replicas = strategy.num_replicas_in_sync

    def trial_fn(values, trial_dir):
        trial_config = with_hyperparameters(config, values, replicas, trial_dir)
        results = run_fn(
            trial_config, strategy=strategy, test=False, verbose=verbose
        )
        return results["validation"]["top1"]

    tuner = run_search(
        config.search, trial_fn, config.run.model_dir, config.run.seed, strategy
    )
    if is_tuner_worker():
        return None
    best = tuner.oracle.get_best_trials(1)[0]
    trials = [
        dict(
            trial_id=trial.trial_id,
            values=trial.hyperparameters.values,
            val_top1=trial.score,
            status=trial.status,
        )
        for trial in tuner.oracle.trials.values()
    ]
    return dict(
        best_trial=best.trial_id,
        best_values=best.hyperparameters.values,
        best_dir=tuner.get_trial_dir(best.trial_id),
        trials=trials,
    )


def search_and_test(config, run_fn, strategy, inputs, verbose=True):
    """Appendix C.1: search on the validation images, test the best trial.

    The best trial's `classifier.keras` (see `search_best`) is evaluated
    once on the test set (read as `inputs` say), copied to `model_dir`
    and reported in its `results.json` with every trial's values and
    score.

    Returns:
        The results dict, or None in a distributed search's worker.
    """
    model_dir = config.run.model_dir
    record = search_best(config, run_fn, strategy, verbose)
    if record is None:
        return None
    best_dir = record["best_dir"]
    with strategy.scope():
        model = keras.saving.load_model(
            os.path.join(best_dir, results_lib.CLASSIFIER_FILE), compile=False
        )
    data = config.data
    batch = inputs_lib.eval_batch_size(config)
    split = splits.label_split(
        data, config.run.seed, data.subset_dir or model_dir, write=False
    )
    test = results_lib.evaluate(
        strategy, model, inputs_lib.test_fn(inputs, data, split, batch)
    )
    path = os.path.join(model_dir, results_lib.CLASSIFIER_FILE)
    tf.io.gfile.copy(
        os.path.join(best_dir, results_lib.CLASSIFIER_FILE),
        path,
        overwrite=True,
    )
    results = dict(
        results_lib.read_results(best_dir),
        top1=test["top1"],
        top5=test["top5"],
        test=test,
        classifier=path,
        model_dir=model_dir,
        config=config.to_dict(),
        search=record,
    )
    results_lib.write_results(model_dir, results)
    return results
