"""Step memory of pretraining: an estimate, a device's capacity, a check.

`estimate(config)` predicts the memory of one replica's training step
from the config alone (nothing is built): the weights, Adam's two moments
and the Polyak average (four float32 copies of every parameter), the
gradients (two copies, three with micro-batches: the slices' sum), the
encoder's kept activations for the images of one slice
(`models.remat.kept_elements` under `--remat`), and a part that grows
with the whole replica batch (latents, context networks, InfoNCE). The
bytes per activation element and per latent element are fitted to peak
RSS of real steps on a CPU (BENCHMARKS.md, "Memory"): an estimate for
accelerators, not a measurement on one.

`check(config, strategy)` compares it with one device's memory (by the
device's name, `--device_memory_gb`, or the host's RAM on CPUs) before
the model is built, and fails naming `--microbatches` and `--remat`,
with settings that fit, instead of running out of memory at the first
step.
"""

import dataclasses
import os
import re

import tensorflow as tf

from cpc_tf.config import FlagError
from cpc_tf.config.memory import REMAT_MODES
from cpc_tf.models import encoders, remat

GB = 1e9
# Fitted to the peak step RSS of the v2 configuration (ResNet-161, 80x80
# patches, float32) at batch 2 and 4 with --remat=none and blocks on a
# CPU (BENCHMARKS.md "Memory"); the other measured steps (stages,
# micro-batches) fall within 10 % of the estimate (tests/test_memory.py).
BYTES_PER_KEPT_ELEMENT = 2.55
BYTES_PER_LATENT_ELEMENT = 2530.0
# What the framework, the input pipeline and fragmentation leave unused.
HEADROOM = 0.9

# Memory per device in GB, by a fragment of the name TF reports.
KNOWN_DEVICES = (
    ("H200", 141),
    ("H100", 80),
    ("A100", 40),
    ("L40", 48),
    ("A10G", 24),
    ("L4", 24),
    ("4090", 24),
    ("3090", 24),
    ("V100", 16),
    ("T4", 16),
)


@dataclasses.dataclass(frozen=True)
class StepEstimate:
    """Bytes of one replica's step (see the module)."""

    state: float
    gradients: float
    activations_per_image: float
    batch_per_image: float

    def total(self, per_replica, microbatches):
        """Bytes of a step on `per_replica` images in `microbatches`."""
        return (
            self.state
            + self.gradients * (3 if microbatches > 1 else 2)
            + self.activations_per_image * per_replica / microbatches
            + self.batch_per_image * per_replica
        )


def head_param_count(model, latent_dim):
    """Parameters of the CPC head (context networks, projections,
    predictors) of a `ModelConfig`, counted without building it."""
    hidden, depth = model.context_hidden, latent_dim
    block = depth * hidden + hidden  # 1x1 in
    block += 3 * hidden * hidden + hidden  # 1x3 row
    block += 2 * hidden * hidden + hidden  # 2x1 column
    block += hidden * depth + depth  # 1x1 out
    offsets = model.steps_to_predict - model.steps_to_ignore
    per_head = model.context_blocks * block
    per_head += (1 + offsets) * (depth * model.target_dim + model.target_dim)
    heads = 1 if model.share_context else len(model.directions)
    return heads * per_head


def estimate(config, remat_mode=None):
    """The `StepEstimate` of a `PretrainConfig` (`remat_mode`: another
    `--remat` than the config's)."""
    data, model = config.data, config.model
    kwargs = model.backbone_kwargs()
    norm = kwargs.pop("norm")
    spec = encoders.resnet_spec(**kwargs)
    params = encoders.resnet_v2_param_count(spec, norm)
    params += head_param_count(model, spec.output_dim)
    patches = data.grid_size**2
    kept = remat.kept_elements(
        spec, data.patch_size, remat_mode or config.memory.remat, norm
    )
    return StepEstimate(
        state=4 * 4 * params,
        gradients=4 * params,
        activations_per_image=BYTES_PER_KEPT_ELEMENT * kept * patches,
        batch_per_image=BYTES_PER_LATENT_ELEMENT * patches * spec.output_dim,
    )


def _known(name):
    sized = re.search(r"(\d+)\s*GB", name)
    if sized:
        return float(sized.group(1))
    for fragment, size in KNOWN_DEVICES:
        if fragment in name:
            return float(size)
    return None


def _host_ram():
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _device_type(strategy):
    """ "GPU", "TPU" or "CPU": what one replica of `strategy` runs on."""
    try:
        device = strategy.extended.worker_devices[0]
    except RuntimeError:  # the default strategy: TF's default placement
        return "GPU" if tf.config.list_logical_devices("GPU") else "CPU"
    return tf.DeviceSpec.from_string(device).device_type or "CPU"


def device_memory(strategy, device_memory_gb=0.0):
    """`(bytes, description)` of one replica's device, or `(None, why)`.

    `device_memory_gb` wins; GPUs are known by name (TF reports no total);
    CPU replicas share the host's RAM; TPUs need `--device_memory_gb`.
    """
    if device_memory_gb:
        return device_memory_gb * GB, "--device_memory_gb"
    kind = _device_type(strategy)
    if kind == "GPU":
        gpus = tf.config.list_physical_devices("GPU")
        name = tf.config.experimental.get_device_details(gpus[0]).get(
            "device_name", "GPU"
        )
        size = _known(name)
        if size is None:
            return None, f"{name} is not in the table of known GPUs"
        return size * GB, name
    if kind == "TPU":
        return None, "TF does not report a TPU core's memory"
    replicas = strategy.num_replicas_in_sync
    return _host_ram() / replicas, f"host RAM / {replicas} CPU replicas"


def _divisors(count):
    return [k for k in range(1, count + 1) if count % k == 0]


def fitting_settings(config, per_replica, capacity):
    """`[(remat, microbatches, bytes)]`: for each `--remat` mode, the
    fewest micro-batches whose step fits in `capacity` bytes."""
    found = []
    for mode in REMAT_MODES:
        step = estimate(config, mode)
        for k in _divisors(per_replica):
            need = step.total(per_replica, k)
            if need <= capacity:
                found.append((mode, k, need))
                break
    return found


def check_microbatches(per_replica, microbatches, batch_size, replicas):
    """Fails, naming --microbatches, unless it divides a replica's batch."""
    if per_replica % microbatches:
        raise FlagError(
            f"--microbatches: {microbatches} does not divide the "
            f"{per_replica} images of each replica (--batch_size "
            f"{batch_size} over {replicas})."
        )


def check(config, strategy):
    """The start-up check (see the module) of a `PretrainConfig`.

    Returns:
        A one-line summary of the estimate against the device.

    Raises:
        FlagError: naming --microbatches, when they do not divide a
            replica's batch, and --microbatches / --remat when the step
            does not fit (with settings that do, where some do).
    """
    run, memory = config.run, config.memory
    replicas = strategy.num_replicas_in_sync
    per_replica = run.batch_size // replicas
    check_microbatches(
        per_replica, memory.microbatches, run.batch_size, replicas
    )
    if not memory.memory_check:
        return "memory check skipped (--memory_check=false)"
    need = estimate(config).total(per_replica, memory.microbatches)
    capacity, device = device_memory(strategy, memory.device_memory_gb)
    if capacity is None:
        return (
            f"memory: a step needs about {need / GB:.1f} GB per replica "
            f"(estimate); not checked: {device} (set --device_memory_gb)"
        )
    usable = HEADROOM * capacity
    line = (
        f"about {need / GB:.1f} GB per replica ({per_replica} images, "
        f"--microbatches={memory.microbatches}, --remat={memory.remat}; "
        f"an estimate from CPU measurements) of {capacity / GB:.1f} GB "
        f"({device})"
    )
    if need <= usable:
        return f"memory: {line}"
    fits = fitting_settings(config, per_replica, usable)
    advice = "; ".join(
        f"--remat={mode} --microbatches={k} (~{size / GB:.1f} GB)"
        for mode, k, size in fits
    )
    advice = (
        f"These fit: {advice}."
        if fits
        else "Nothing fits even one image per slice: lower --batch_size "
        "or use more replicas."
    )
    raise FlagError(
        f"--microbatches/--remat: the step needs {line}, over the "
        f"{HEADROOM:.0%} of it a step may use. {advice} "
        "(--memory_check=false skips this check.)"
    )


def largest_batch(config, capacity, limit=4096):
    """The largest power-of-two replica batch whose step (the config's
    `--remat` and `--microbatches`, at least one image per slice) fits
    in `HEADROOM * capacity` bytes; 0 when not even one image does."""
    step = estimate(config)
    batch, fitting = 1, 0
    while batch <= limit:
        slices = min(config.memory.microbatches, batch)
        if step.total(batch, slices) > HEADROOM * capacity:
            break
        fitting, batch = batch, 2 * batch
    return fitting
