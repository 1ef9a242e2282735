"""The start-up memory check: the estimate against built models and the
measured steps, device capacities, and the failure that names the flags."""

import pytest
import tensorflow as tf
from helpers import FAST, ROOT, parse
from test_pretrain import START_TIMEOUT, cli, fails_in_a_line

from cpc_tf.config import FlagError
from cpc_tf.training import builders, memory

V2 = f"--flagfile={ROOT}/flags/v2.cfg"

# Peak RSS of the step minus the RSS before it, in MiB (BENCHMARKS.md,
# "Memory": v2 = ResNet-161 at the paper's geometry, float32, Zen 4).
MEASURED_V2_STEPS = [
    # (batch, microbatches, remat, MiB)
    (2, 1, "none", 6543),
    (4, 1, "none", 10599),
    (2, 1, "blocks", 4276),
    (4, 1, "blocks", 6030),
    (2, 1, "stages", 4316),
    (4, 1, "stages", 5867),
    (4, 2, "none", 8333),
    (4, 4, "blocks", 6336),
    # 2026-12-07, the session before: the same machine type.
    (2, 2, "none", 6581),
    (4, 4, "none", 7277),
]


def test_parameters_are_counted_without_building():
    config = parse(f"--flagfile={ROOT}/flags/demo.cfg", *FAST)
    step = memory.estimate(config)
    built = builders.build_cpc_model(config)
    params = sum(int(tf.size(v)) for v in built.trainable_weights)
    assert step.gradients == 4 * params
    assert step.state == 16 * params


@pytest.mark.parametrize("batch,microbatches,mode,measured", MEASURED_V2_STEPS)
def test_the_estimate_reproduces_the_measured_steps(
    batch, microbatches, mode, measured
):
    config = parse(V2, f"--remat={mode}")
    step = memory.estimate(config)
    predicted = step.total(batch, microbatches) - step.state
    assert abs(predicted / 2**20 / measured - 1) < 0.1


def test_the_shipped_v2_settings_fit_eight_80_gb_gpus():
    # flags/v2.cfg: batch 512 on 8 replicas, --remat=blocks.
    config = parse(V2)
    assert config.memory.remat == "blocks"
    need = memory.estimate(config).total(64, config.memory.microbatches)
    assert need <= memory.HEADROOM * 80e9
    assert memory.estimate(config, "none").total(64, 1) > 80e9


def test_remat_and_microbatches_lower_the_estimate():
    config = parse(V2)
    none = memory.estimate(config, "none").total(64, 1)
    blocks = memory.estimate(config, "blocks").total(64, 1)
    stages = memory.estimate(config, "stages").total(64, 1)
    sliced = memory.estimate(config, "none").total(64, 8)
    assert stages <= blocks < none and sliced < none


@pytest.mark.parametrize(
    "name,gb",
    [
        ("NVIDIA H100 80GB HBM3", 80),
        ("NVIDIA A100-SXM4-40GB", 40),
        ("Tesla T4", 16),
        ("NVIDIA H200", 141),
        ("Some New Accelerator", None),
    ],
)
def test_gpus_are_known_by_name(name, gb):
    assert memory._known(name) == gb


def test_cpu_replicas_share_the_host_ram(two_replicas):
    one, _ = memory.device_memory(tf.distribute.get_strategy())
    two, why = memory.device_memory(two_replicas)
    assert one == pytest.approx(2 * two) and "host RAM" in why
    assert memory.device_memory(two_replicas, 80)[0] == 80e9


def test_a_step_that_fits_passes_with_a_line():
    config = parse(f"--flagfile={ROOT}/flags/demo.cfg", *FAST)
    line = memory.check(config, tf.distribute.get_strategy())
    assert line.startswith("memory: about") and "estimate" in line


def test_the_paper_batch_on_one_gpu_names_the_flags_and_what_fits():
    config = parse(V2, "--device_memory_gb=80", "--strategy=default")
    with pytest.raises(FlagError) as error:
        memory.check(config, tf.distribute.get_strategy())
    message = str(error.value)
    assert message.startswith("--microbatches/--remat:")
    assert "512 images" in message and "80.0 GB" in message
    assert "Nothing fits" in message  # 512 images on one device
    skipped = parse(V2, "--memory_check=false")
    assert "skipped" in memory.check(skipped, tf.distribute.get_strategy())


def test_settings_that_fit_are_offered(two_replicas):
    # 16 images per replica of 8 GB: the suggestions are checked to fit.
    config = parse(
        V2, "--batch_size=32", "--device_memory_gb=30", "--remat=none"
    )
    with pytest.raises(FlagError, match="These fit: ") as error:
        memory.check(config, two_replicas)
    for mode, k, need in memory.fitting_settings(config, 16, 0.9 * 30e9):
        assert f"--remat={mode} --microbatches={k}" in str(error.value)
        assert memory.estimate(config, mode).total(16, k) == need <= 27e9
    fitting = parse(
        V2,
        "--batch_size=32",
        "--device_memory_gb=30",
        "--remat=blocks",
        "--microbatches=16",
    )
    assert memory.check(fitting, two_replicas).startswith("memory:")


def test_microbatches_that_do_not_divide_name_the_flag():
    config = parse(
        f"--flagfile={ROOT}/flags/demo.cfg",
        *FAST,
        "--batch_size=4",
        "--microbatches=3",
    )
    with pytest.raises(FlagError, match="--microbatches: 3 does not divide"):
        memory.check(config, tf.distribute.get_strategy())


def test_the_paper_config_fails_before_the_first_step(tmp_path):
    # This machine's RAM cannot hold 512 images of ResNet-161 (about
    # 1 TB): one line naming the flags, before the model is built.
    process = cli(
        "--flagfile=flags/v2.cfg",
        "--train_data=mnist5k:train",
        "--strategy=default",
        f"--model_dir={tmp_path}",
    )
    output = process.communicate(timeout=START_TIMEOUT)[0]
    assert process.returncode == 1
    fails_in_a_line(output, "--microbatches/--remat")
    assert not (tmp_path / "config.json").exists()
    assert not (tmp_path / "checkpoints").exists()


def test_the_flags_belong_to_pretraining_only():
    from absl import flags

    from cpc_tf.protocols import linear

    values = flags.FlagValues()
    linear.define_flags(values)
    assert "memory_check" not in values and "microbatches" not in values
