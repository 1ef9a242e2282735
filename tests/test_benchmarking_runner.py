"""The benchmark's plan: settings per config, checked before any work."""

import pytest

from cpc_tf.benchmarking import runner
from cpc_tf.config import FlagError


def _options(**kwargs):
    return runner.BenchmarkOptions(configs=("demo", "cifar10"), **kwargs)


def test_plan_reads_per_config_settings():
    planned = runner.plan(
        _options(
            batch_size=("demo:8", "demo:16", "cifar10:4"),
            steps=("3",),
            warmup_steps=("cifar10:2", "1"),
            overrides=("demo:--shuffle_buffer=64",),
        )
    )
    rows = [
        (name, batch, steps, warmup)
        for name, batch, _, steps, warmup in planned
    ]
    assert rows == [
        ("demo", 8, 3, 1),
        ("demo", 16, 3, 1),
        ("cifar10", 4, 3, 2),
    ]
    demo_args, cifar_args = planned[0][2], planned[2][2]
    assert "--shuffle_buffer=64" in demo_args
    assert "--shuffle_buffer=64" not in cifar_args
    assert demo_args[-1] == "--strategy=default"


def test_plan_defaults_to_the_flagfile_batch_and_v2_settings():
    planned = runner.plan(runner.BenchmarkOptions(configs=("cifar10", "v2")))
    (_, cifar_batch, _, steps, warmup), v2 = planned
    assert (cifar_batch, steps, warmup) == (64, runner.DEFAULT_STEPS, 2)
    assert (v2[1], v2[3], v2[4]) == (2, 2, 2)


@pytest.mark.parametrize(
    "kwargs, flag",
    [
        (dict(configs=("nope",)), "--configs"),
        (dict(precisions=("float16",)), "--precisions"),
        (dict(batch_size=("demo:x",)), "--batch_size"),
        (dict(overrides=("demo:shuffle_buffer=3",)), "--set"),
        (dict(steps=("0",)), "--steps"),
    ],
)
def test_bad_settings_fail_naming_the_flag(kwargs, flag):
    options = dict(dict(configs=("demo",)), **kwargs)
    with pytest.raises(FlagError, match=flag):
        runner.plan(runner.BenchmarkOptions(**options))


def test_ratios_compare_with_float32():
    records = [
        dict(
            config="demo",
            batch_size=8,
            precision="float32",
            float32_ratio=1.0,
            interleaved=True,
        ),
        dict(
            config="demo",
            batch_size=8,
            precision="mixed_bfloat16",
            float32_ratio=1.5,
            interleaved=True,
        ),
    ]
    assert runner.ratios(records) == [
        "demo batch 8: mixed_bfloat16 1.50x float32 images/s (same process)"
    ]
