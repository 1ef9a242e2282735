"""Pre-activation (v2) bottleneck ResNets and the CPC patch encoder.

`resnet_v2(depth)` builds the standard ResNet-v2 50/101/152/200 (four stacks,
output stride 32) and the CPC v2 ResNet-161 (three stacks [3, 4, 46],
bottleneck widths [64, 128, 512], outputs [256, 512, 4096], output stride
16, about 305M parameters). `resnet_v2(blocks=..., widths=...)` builds a
small variant for CPUs and tests.

Normalization is a constructor choice. "layer" is layer normalization over
each example's whole `[H, W, C]` activation with a per-channel scale and
offset (`LayerNorm`, the function of `GroupNormalization(groups=1)`): it
works for any input size and uses no batch statistics, which CPC needs
because batch statistics leak information between the patches of a batch.
"group" uses 32 groups (fewer when the width is not divisible), "batch" is
BatchNormalization, "none" adds conv biases instead.
"""

import copy
import dataclasses

import keras
from keras import layers, ops

from cpc_tf.config.model import NORMALIZATIONS
from cpc_tf.models import remat as remat_lib


@dataclasses.dataclass(frozen=True)
class ResNetSpec:
    """The shape of a bottleneck ResNet-v2.

    Attributes:
        blocks: bottleneck blocks per stack.
        widths: bottleneck (inner) width per stack.
        output_widths: output width per stack.
        strides: stride of each stack's first block.
        stem_width: channels of the stem convolution.
        stem_kernel: stem kernel size (7 for ImageNet, 3 for tiny images).
        stem_stride: stem convolution stride.
        stem_pool: whether a 3x3 stride-2 max pool follows the stem.
    """

    blocks: tuple
    widths: tuple
    output_widths: tuple
    strides: tuple
    stem_width: int = 64
    stem_kernel: int = 7
    stem_stride: int = 2
    stem_pool: bool = True

    def __post_init__(self):
        lengths = {
            len(self.blocks),
            len(self.widths),
            len(self.output_widths),
            len(self.strides),
        }
        if len(lengths) != 1:
            raise ValueError(
                "blocks, widths, output_widths and strides must have one "
                f"entry per stack; got {self}."
            )
        values = self.blocks + self.widths + self.output_widths + self.strides
        if any(int(v) < 1 for v in values):
            raise ValueError(f"All ResNet sizes must be >= 1; got {self}.")

    @property
    def output_dim(self):
        return self.output_widths[-1]


def _standard(blocks):
    return ResNetSpec(
        blocks=blocks,
        widths=(64, 128, 256, 512),
        output_widths=(256, 512, 1024, 2048),
        strides=(1, 2, 2, 2),
    )


RESNET_V2_SPECS = {
    50: _standard((3, 4, 6, 3)),
    101: _standard((3, 4, 23, 3)),
    152: _standard((3, 8, 36, 3)),
    200: _standard((3, 24, 36, 3)),
    161: ResNetSpec(
        blocks=(3, 4, 46),
        widths=(64, 128, 512),
        output_widths=(256, 512, 4096),
        strides=(1, 2, 2),
    ),
}


def resnet_spec(depth=None, **overrides):
    """The spec for `depth` (one of `RESNET_V2_SPECS`), or a custom one.

    With `depth=None`, `blocks`, `widths` and `output_widths` are required;
    strides default to 1 for the first stack and 2 after.
    """
    if depth is not None:
        if depth not in RESNET_V2_SPECS:
            raise ValueError(
                f"Unknown ResNet-v2 depth {depth}; expected one of "
                f"{sorted(RESNET_V2_SPECS)} or depth=None with blocks/widths."
            )
        return dataclasses.replace(RESNET_V2_SPECS[depth], **overrides)
    missing = [
        k for k in ("blocks", "widths", "output_widths") if k not in overrides
    ]
    if missing:
        raise ValueError(f"A custom ResNet needs {missing} (or a depth).")
    overrides = {
        k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()
    }
    overrides.setdefault(
        "strides", (1,) + (2,) * (len(overrides["blocks"]) - 1)
    )
    return ResNetSpec(**overrides)


def _norm_params(norm, channels):
    if norm in ("layer", "group"):
        return 2 * channels
    if norm == "batch":
        return 4 * channels
    return 0


def resnet_v2_param_count(spec, norm="layer", in_channels=3):
    """Parameters of `resnet_v2(spec, norm)`, counted without building it.

    Counts what `keras.Model.count_params()` counts (BatchNorm moving
    statistics included).
    """
    bias = norm == "none"

    def conv(kernel, c_in, c_out):
        return kernel * kernel * c_in * c_out + (c_out if bias else 0)

    total = conv(spec.stem_kernel, in_channels, spec.stem_width)
    channels = spec.stem_width
    for blocks, width, out, stride in zip(
        spec.blocks, spec.widths, spec.output_widths, spec.strides
    ):
        for index in range(blocks):
            block_stride = stride if index == 0 else 1
            total += _norm_params(norm, channels)
            if channels != out or block_stride != 1:
                total += conv(1, channels, out)
            total += conv(1, channels, width) + _norm_params(norm, width)
            total += conv(3, width, width) + _norm_params(norm, width)
            total += conv(1, width, out)
            channels = out
    return total + _norm_params(norm, channels)


@keras.saving.register_keras_serializable(package="cpc_tf")
class LayerNorm(layers.Layer):
    """Layer normalization of each example's `[H, W, C]`, optionally + ReLU.

    `[B, H, W, C]` -> `[B, H, W, C]`: mean and variance over H, W and C, a
    per-channel scale `gamma` and offset `beta` (the function of
    `GroupNormalization(groups=1)`), then ReLU when `relu`. It computes in
    float32 and casts to the compute dtype once, after the ReLU: under
    mixed_bfloat16 that skips TensorFlow's bfloat16 ReLU and its gradient,
    which are slow on CPUs (BENCHMARKS.md).

    Args:
        epsilon: added to the variance.
        relu: apply ReLU to the normalized output.
    """

    def __init__(self, epsilon=1e-5, relu=False, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon
        self.relu = relu

    def build(self, input_shape):
        channels = input_shape[-1]
        self.gamma = self.add_weight(
            shape=(channels,), initializer="ones", name="gamma"
        )
        self.beta = self.add_weight(
            shape=(channels,), initializer="zeros", name="beta"
        )

    def call(self, inputs):
        channels = self.gamma.shape[0]
        spatial = tuple(ops.shape(inputs)[1:-1])
        # Statistics on a [B, H, W, 1, C] view. TensorFlow's Conv2D returns
        # its input's shape for an empty batch (a replica's share of an
        # uneven last batch); a reshape that adds an axis fixes the channel
        # count (one that keeps the rank is optimized away).
        x = ops.cast(
            ops.reshape(inputs, (-1,) + spatial + (1, channels)), "float32"
        )
        axes = tuple(range(1, len(x.shape)))
        mean, variance = ops.moments(x, axes=axes, keepdims=True)
        scale = ops.rsqrt(variance + self.epsilon) * ops.cast(
            self.gamma, "float32"
        )
        x = x * scale + (ops.cast(self.beta, "float32") - mean * scale)
        if self.relu:
            x = ops.relu(x)
        x = ops.reshape(x, (-1,) + spatial + (channels,))
        return ops.cast(x, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(epsilon=self.epsilon, relu=self.relu)
        return config


def make_norm(norm, channels, name, dtype=None):
    """A normalization layer for `channels`, or None for "none"."""
    if norm == "layer":
        return LayerNorm(name=name, dtype=dtype)
    if norm == "group":
        groups = 32
        while channels % groups:
            groups //= 2
        return layers.GroupNormalization(
            groups=groups, epsilon=1e-5, name=name, dtype=dtype
        )
    if norm == "batch":
        return layers.BatchNormalization(
            epsilon=1e-5, momentum=0.9, name=name, dtype=dtype
        )
    if norm == "none":
        return None
    raise ValueError(
        f"Unknown normalization {norm!r}; expected one of {NORMALIZATIONS}."
    )


def _preact(x, norm, name, dtype):
    if norm == "layer":
        return LayerNorm(relu=True, name=f"{name}_norm", dtype=dtype)(x)
    layer = make_norm(norm, x.shape[-1], f"{name}_norm", dtype)
    if layer is not None:
        x = layer(x)
    return layers.ReLU(name=f"{name}_relu", dtype=dtype)(x)


def _conv(filters, kernel, stride, norm, name, dtype):
    return layers.Conv2D(
        filters,
        kernel,
        strides=stride,
        padding="same",
        use_bias=norm == "none",
        kernel_initializer="he_normal",
        name=name,
        dtype=dtype,
    )


def _bottleneck(x, width, out, stride, norm, name, dtype):
    preact = _preact(x, norm, f"{name}_preact", dtype)
    if x.shape[-1] != out or stride != 1:
        shortcut = _conv(out, 1, stride, norm, f"{name}_shortcut", dtype)(
            preact
        )
    else:
        shortcut = x
    h = _conv(width, 1, 1, norm, f"{name}_conv1", dtype)(preact)
    h = _preact(h, norm, f"{name}_conv1", dtype)
    h = _conv(width, 3, stride, norm, f"{name}_conv2", dtype)(h)
    h = _preact(h, norm, f"{name}_conv2", dtype)
    h = _conv(out, 1, 1, norm, f"{name}_conv3", dtype)(h)
    return layers.Add(name=f"{name}_add", dtype=dtype)([shortcut, h])


def resnet_v2(
    depth=None,
    *,
    norm="layer",
    input_shape=(None, None, 3),
    name=None,
    dtype=None,
    **spec_overrides,
):
    """A ResNet-v2 feature extractor: `[B, h, w, 3]` -> `[B, h', w', D]`.

    Args:
        depth: 50, 101, 152, 200 or 161; None for a custom spec given by
            `blocks`, `widths`, `output_widths` (and optionally `strides`,
            `stem_*`) keyword arguments, which also override a depth's spec.
        norm: "layer" (CPC), "batch", "group" or "none".
        input_shape: `(h, w, C)`; h and w may be None.
        name: model name; defaults to `resnet_v2_<depth>`.
        dtype: a dtype policy for every layer (default: the global one).

    Returns:
        A functional `keras.Model` ending with the final pre-activation
        normalization and ReLU of ResNet-v2 (no pooling, no classifier).
    """
    if norm not in NORMALIZATIONS:
        raise ValueError(
            f"Unknown normalization {norm!r}; expected one of {NORMALIZATIONS}."
        )
    spec = resnet_spec(depth, **spec_overrides)
    inputs = keras.Input(shape=input_shape, name="images")
    x = layers.Conv2D(
        spec.stem_width,
        spec.stem_kernel,
        strides=spec.stem_stride,
        padding="same",
        kernel_initializer="he_normal",
        use_bias=norm == "none",
        name="stem_conv",
        dtype=dtype,
    )(inputs)
    if spec.stem_pool:
        x = layers.MaxPooling2D(
            3, strides=2, padding="same", name="stem_pool", dtype=dtype
        )(x)
    for stack, (blocks, width, out, stride) in enumerate(
        zip(spec.blocks, spec.widths, spec.output_widths, spec.strides)
    ):
        for index in range(blocks):
            x = _bottleneck(
                x,
                width,
                out,
                stride if index == 0 else 1,
                norm,
                f"stack{stack + 1}_block{index + 1}",
                dtype,
            )
    x = _preact(x, norm, "post", dtype)
    return keras.Model(inputs, x, name=name or f"resnet_v2_{depth or 'custom'}")


@keras.saving.register_keras_serializable(package="cpc_tf")
class PatchEncoder(layers.Layer):
    """Encodes every patch of a grid and mean-pools it to one vector.

    `[B, gh, gw, ph, pw, C]` -> `[B, gh, gw, D]`: the backbone runs on all
    `B * gh * gw` patches as one batch, then each patch's feature map is
    averaged over its spatial positions.

    Args:
        backbone: a model `[N, ph, pw, C]` -> `[N, h, w, D]`, e.g.
            `resnet_v2(...)`. Applied to a whole image it gives that image's
            feature grid.
        remat: "none", "blocks" or "stages": what the backbone keeps for
            the backward pass (`cpc_tf.models.remat`); equal values and
            gradients, less memory for more compute.
    """

    def __init__(self, backbone, remat="none", **kwargs):
        super().__init__(**kwargs)
        remat_lib.check_mode(remat)
        self.backbone = backbone
        self.remat = remat

    def build(self, input_shape):
        self.backbone.build((None,) + tuple(input_shape[3:]))

    def call(self, patches):
        shape = ops.shape(patches)
        flat = ops.reshape(patches, (-1,) + tuple(shape[3:]))
        backbone = remat_lib.rematerialized(self.backbone, self.remat)
        features = ops.mean(backbone(flat), axis=(1, 2))
        return ops.reshape(
            features, (shape[0], shape[1], shape[2], features.shape[-1])
        )

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:3]) + (self.backbone.output_shape[-1],)

    @property
    def output_dim(self):
        return self.backbone.output_shape[-1]

    def get_config(self):
        config = super().get_config()
        config["backbone"] = keras.saving.serialize_keras_object(self.backbone)
        config["remat"] = self.remat
        return config

    @classmethod
    def from_config(cls, config):
        # Keras's deserialization consumes the nested config: use a copy.
        config = copy.deepcopy(config)
        config["backbone"] = keras.saving.deserialize_keras_object(
            config["backbone"]
        )
        return cls(**config)


def patch_grid_model(encoder, grid_shape, name="cpc_encoder"):
    """A functional `keras.Model` of a `PatchEncoder` on patch grids.

    Args:
        encoder: a `PatchEncoder`.
        grid_shape: `(gh, gw, ph, pw, C)` of its inputs (None for any).

    Returns:
        `[B, gh, gw, ph, pw, C]` -> `[B, gh, gw, D]`, input named
        "patches" (how `encoder.keras` is saved).
    """
    inputs = keras.Input(tuple(grid_shape), name="patches")
    return keras.Model(inputs, encoder(inputs), name=name)
