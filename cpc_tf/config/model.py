"""The model group: the encoder's shape and the CPC head."""

import dataclasses

from cpc_tf.config.base import config_field, flag_error

# The names the model core accepts (`cpc_tf.models` imports them from here,
# so that the flags are checked before any model code runs).
DIRECTIONS = ("down", "up", "left", "right")
NORMALIZATIONS = ("layer", "batch", "group", "none")
# `models.encoders.RESNET_V2_SPECS` holds their shapes.
RESNET_V2_DEPTHS = (50, 101, 152, 161, 200)

# The ModelConfig fields that shape the encoder (`backbone_kwargs` reads
# these and `norm`); a network built from them matches the CPC encoder.
ENCODER_SHAPE_FIELDS = (
    "encoder_depth",
    "encoder_blocks",
    "encoder_widths",
    "encoder_output_widths",
    "stem_width",
    "stem_kernel",
    "stem_stride",
    "stem_pool",
)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Encoder and CPC head (appendix A, section 4 of the paper)."""

    encoder_depth: int = config_field(
        161,
        "ResNet-v2 depth (50, 101, 152, 200, 161); 0 = the small custom "
        "encoder given by --encoder_blocks/--encoder_widths/...",
    )
    encoder_blocks: tuple = config_field(
        (1, 1), "Custom encoder: blocks per stack."
    )
    encoder_widths: tuple = config_field(
        (16, 32), "Custom encoder: bottleneck width per stack."
    )
    encoder_output_widths: tuple = config_field(
        (64, 128), "Custom encoder: output width per stack."
    )
    stem_width: int = config_field(64, "Stem convolution channels.")
    stem_kernel: int = config_field(
        7, "Stem kernel (7 ImageNet, 3 tiny images)."
    )
    stem_stride: int = config_field(2, "Stem stride.")
    stem_pool: bool = config_field(True, "3x3/2 max pool after the stem.")
    norm: str = config_field(
        "layer", "Encoder normalization: " + "|".join(NORMALIZATIONS)
    )
    directions: tuple = config_field(
        DIRECTIONS, "Prediction directions (v2: down,up,left,right)."
    )
    steps_to_ignore: int = config_field(
        2, "Offsets 1..steps_to_ignore skipped."
    )
    steps_to_predict: int = config_field(3, "Largest offset predicted.")
    target_dim: int = config_field(64, "Target / prediction width.")
    emb_scale: float = config_field(0.1, "Prediction scale.")
    share_context: bool = config_field(
        False, "One context network and predictors for all directions."
    )
    context_blocks: int = config_field(5, "PixelCNN residual blocks.")
    context_hidden: int = config_field(256, "PixelCNN hidden width.")
    loss_chunk_size: int = config_field(
        0, "Prediction rows per InfoNCE logits chunk (0 = one chunk)."
    )

    def __post_init__(self):
        if self.encoder_depth and self.encoder_depth not in RESNET_V2_DEPTHS:
            flag_error(
                "encoder_depth",
                f"expected 0 or one of {list(RESNET_V2_DEPTHS)}, got "
                f"{self.encoder_depth}.",
            )
        if self.norm not in NORMALIZATIONS:
            flag_error(
                "norm", f"expected one of {NORMALIZATIONS}, got {self.norm}."
            )
        unknown = [d for d in self.directions if d not in DIRECTIONS]
        if unknown or not self.directions:
            flag_error(
                "directions",
                f"unknown {unknown or 'empty list'}; expected some of "
                f"{DIRECTIONS}.",
            )
        if not 0 <= self.steps_to_ignore < self.steps_to_predict:
            flag_error(
                "steps_to_predict",
                "need 0 <= --steps_to_ignore < --steps_to_predict, got "
                f"{self.steps_to_ignore} and {self.steps_to_predict}.",
            )
        if not self.encoder_depth:
            lengths = {
                len(self.encoder_blocks),
                len(self.encoder_widths),
                len(self.encoder_output_widths),
            }
            if len(lengths) != 1:
                flag_error(
                    "encoder_blocks",
                    "--encoder_blocks, --encoder_widths and "
                    "--encoder_output_widths need one entry per stack.",
                )

    def backbone_kwargs(self):
        """Keyword arguments of `encoders.resnet_v2` for this config."""
        kwargs = dict(
            norm=self.norm,
            stem_width=self.stem_width,
            stem_kernel=self.stem_kernel,
            stem_stride=self.stem_stride,
            stem_pool=self.stem_pool,
        )
        if self.encoder_depth:
            return dict(depth=self.encoder_depth, **kwargs)
        return dict(
            depth=None,
            blocks=tuple(int(v) for v in self.encoder_blocks),
            widths=tuple(int(v) for v in self.encoder_widths),
            output_widths=tuple(int(v) for v in self.encoder_output_widths),
            **kwargs,
        )

    def cpc_kwargs(self):
        """Keyword arguments of `model.CPC` for this config."""
        return dict(
            directions=tuple(self.directions),
            steps_to_ignore=self.steps_to_ignore,
            steps_to_predict=self.steps_to_predict,
            target_dim=self.target_dim,
            emb_scale=self.emb_scale,
            share_context=self.share_context,
            context_blocks=self.context_blocks,
            context_hidden=self.context_hidden,
            loss_chunk_size=self.loss_chunk_size or None,
        )
