"""Shared test setup: quiet TF, two logical CPU devices, tiny models.

Fixtures:
- `two_replicas`: the process's one `MirroredStrategy` on the two logical
  CPUs (TF 2.21 cannot run the collectives of two in-process instances).
- `tiny_cpc_task`: a factory of a tiny CPC `CPCTask` (4x4 grid of 8x8
  patches, two directions), `negatives`, optimizer and `microbatches` as
  arguments.

The shared constants and builders (tiny backbones, the tiny CPC, the tiny
pretrained run, `ROOT`) are in `helpers.py`.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# Two logical CPUs let distribution tests run MirroredStrategy in-process.
# This must happen before TF initialises its devices.
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0],
    [tf.config.LogicalDeviceConfiguration()] * 2,
)

import helpers  # noqa: E402 (after the devices are configured)


@pytest.fixture(autouse=True)
def _free_keras_state():
    """Drops the models a test built, so that the test process stays small
    (the v2 test's subprocess needs most of the machine's memory)."""
    yield
    keras.backend.clear_session(free_memory=True)


@pytest.fixture
def two_replicas():
    from cpc_tf.training import distribute

    return distribute.make_strategy("mirrored", devices=helpers.TWO_CPUS)


@pytest.fixture
def tiny_cpc_task():
    from cpc_tf.training.tasks import CPCTask

    def make(negatives="local", optimizer=None, microbatches=1):
        return CPCTask(
            helpers.make_tiny_cpc(),
            optimizer or keras.optimizers.SGD(0.5),
            negatives,
            microbatches=microbatches,
        )

    return make
