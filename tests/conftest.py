"""Shared test setup: quiet TF, two logical CPU devices, tiny models.

Fixtures:
- `two_replicas`: the process's one `MirroredStrategy` on the two logical
  CPUs (TF 2.21 cannot run the collectives of two in-process instances).
- `tiny_cpc_task`: a factory of a tiny CPC `CPCTask` (4x4 grid of 8x8
  patches, two directions), `negatives` and optimizer as arguments.
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

TWO_CPUS = ["/cpu:0", "/cpu:1"]
TINY_BACKBONE = dict(
    blocks=(1,),
    widths=(4,),
    output_widths=(8,),
    stem_width=4,
    stem_kernel=3,
    stem_stride=2,
    stem_pool=False,
)


@pytest.fixture(autouse=True)
def _free_keras_state():
    """Drops the models a test built, so that the test process stays small
    (the v2 test's subprocess needs most of the machine's memory)."""
    yield
    keras.backend.clear_session(free_memory=True)


@pytest.fixture
def two_replicas():
    from cpc_tf import distribute

    return distribute.make_strategy("mirrored", devices=TWO_CPUS)


def make_tiny_cpc():
    """A built tiny CPC model for `[B, 4, 4, 8, 8, 3]` patch grids."""
    from cpc_tf import encoders
    from cpc_tf.model import build_cpc

    return build_cpc(
        encoders.resnet_v2(**TINY_BACKBONE),
        (8, 8, 3),
        (4, 4),
        directions=("down", "right"),
        steps_to_ignore=1,
        steps_to_predict=2,
        context_blocks=1,
        context_hidden=8,
        target_dim=8,
    )


@pytest.fixture
def tiny_cpc_task():
    from cpc_tf.tasks import CPCTask

    def make(negatives="local", optimizer=None):
        return CPCTask(
            make_tiny_cpc(), optimizer or keras.optimizers.SGD(0.5), negatives
        )

    return make
