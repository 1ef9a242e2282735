"""The memory group: what a pretraining step keeps, and the start-up check.

These flags belong to pretraining only: the other protocols do not define
them, so giving one there is an unknown-flag error, not a silent no-op.
"""

import dataclasses

from cpc_tf.config.base import config_field, flag_error

REMAT_MODES = ("none", "blocks", "stages")


@dataclasses.dataclass(frozen=True)
class MemoryConfig:
    """Step memory: micro-batches, rematerialisation, the start-up check."""

    microbatches: int = config_field(
        1,
        "Encode each replica's batch in this many slices, one after "
        "another: the step's gradient is the whole batch's (same "
        "negatives), its encoder memory that of one slice, for one more "
        "forward pass of the encoder. Needs an encoder without batch "
        "statistics.",
    )
    remat: str = config_field(
        "none",
        "Rematerialise the encoder: none | blocks (keep each bottleneck "
        "block's input, recompute the block in the backward pass) | "
        "stages (keep each stack's input; the least memory, two more "
        "forward passes).",
    )
    memory_check: bool = config_field(
        True,
        "Before building the model, estimate the step's memory per "
        "replica and stop, naming --microbatches and --remat, when the "
        "device cannot hold it.",
    )
    device_memory_gb: float = config_field(
        0.0,
        "Memory of one device for --memory_check (0 = known from the "
        "device's name, or the host's RAM on CPUs).",
    )

    def __post_init__(self):
        if self.microbatches < 1:
            flag_error(
                "microbatches", f"must be >= 1, got {self.microbatches}."
            )
        if self.remat not in REMAT_MODES:
            flag_error(
                "remat", f"expected one of {REMAT_MODES}, got {self.remat}."
            )
        if self.device_memory_gb < 0:
            flag_error(
                "device_memory_gb",
                f"must be >= 0, got {self.device_memory_gb}.",
            )
