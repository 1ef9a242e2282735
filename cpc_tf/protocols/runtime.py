"""What every entry point does around its work.

- `entry_point(main)`: the absl `main` wrapper. SIGTERM is watched from
  the start (`preemption`); a preempted run prints how to resume and exits
  0; a bad flag, source or directory ends the program with its one-line
  message naming the flag (exit 1, no traceback, no usage dump).
- `session(run)`: the strategy, the batch check, the seeds and the dtype
  policy of a run, with the float32 policy restored afterwards.
- `prepare_model_dir` and `check_sources`: argument checks that need the
  file system, done before any compute.
"""

import contextlib
import functools

import keras
import tensorflow as tf

from cpc_tf.config import HOLDOUT, FlagError
from cpc_tf.data import sources
from cpc_tf.training import distribute, preemption


def entry_point(main):
    """Wraps an absl `main(argv)` as described in the module docstring."""

    @functools.wraps(main)
    def wrapped(argv):
        preemption.install()
        try:
            return main(argv)
        except preemption.Preempted as stop:
            print(f"preempted: {stop}. Run the same command to resume.")
        except (FlagError, sources.SourceError) as error:
            raise SystemExit(f"error: {error}") from None

    return wrapped


@contextlib.contextmanager
def session(run, strategy=None):
    """Yields the strategy of a `RunConfig` with seeds and dtype policy set.

    Args:
        run: the `RunConfig` (strategy, tpu, batch_size, seed,
            mixed_precision).
        strategy: use this strategy instead of building `run.strategy`.
    """
    if strategy is None:
        strategy = distribute.make_strategy(run.strategy, run.tpu)
    distribute.check_batch_size(strategy, run.batch_size)
    keras.utils.set_random_seed(run.seed)
    with dtype_policy(run.dtype_policy):
        yield strategy


@contextlib.contextmanager
def dtype_policy(name):
    """Keras's global dtype policy `name` inside, float32 after."""
    keras.mixed_precision.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


def prepare_model_dir(path, flag="model_dir", create=True):
    """Checks (and creates) an output directory; any TF file system.

    Raises:
        FlagError: naming `flag`, when `path` is empty or an existing file.
    """
    if not path:
        raise FlagError(f"--{flag}: is required.")
    if tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path):
        raise FlagError(f"--{flag}: {path} is a file, not a directory.")
    if create:
        tf.io.gfile.makedirs(path)
    return path


def check_sources(data, eval_data=True):
    """Opens `--train_data` (and `--eval_data`); returns their infos.

    Raises:
        FlagError: naming the flag whose source is malformed, missing,
            empty or unknown.
    """
    infos = {}
    flags = ["train_data"]
    if eval_data and data.eval_data != HOLDOUT:
        flags.append("eval_data")
    for flag in flags:
        try:
            _, infos[flag] = sources.load_source(
                getattr(data, flag), data_dir=data.data_dir or None
            )
        except sources.SourceError as error:
            raise FlagError(f"--{flag}: {error}") from None
    return infos
