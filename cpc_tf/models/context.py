"""The masked PixelCNN context network of the appendix, and grid rotations.

Each residual block: 1x1 conv to `hidden`, ReLU, 1x3 conv (SAME), one zero
row padded at the top, 2x1 conv (VALID), ReLU, 1x1 conv back to `D`, residual
add; a final ReLU after the blocks. The top zero row makes it causal along H:
output row `r` depends on latent rows `<= r` only.

Directions other than "down" run the same computation on the latent grid
rotated so that the direction of prediction points down the H axis.
"""

import keras
from keras import layers, ops

from cpc_tf.config.model import DIRECTIONS


def rotate_to_down(grid, direction):
    """Rotates `[B, H, W, D]` so that `direction` points down the H axis.

    "down": identity; "up": 180 degrees; "right": clockwise, so that
    rotated[r, c] = grid[H - 1 - c, r]; "left": counter-clockwise, so that
    rotated[r, c] = grid[c, W - 1 - r]. Returns `[B, H', W', D]`.
    """
    if direction == "down":
        return grid
    if direction == "up":
        return ops.flip(ops.flip(grid, axis=1), axis=2)
    transposed = ops.transpose(grid, (0, 2, 1, 3))
    if direction == "right":
        return ops.flip(transposed, axis=2)
    if direction == "left":
        return ops.flip(transposed, axis=1)
    raise ValueError(
        f"Unknown direction {direction!r}; expected one of {DIRECTIONS}."
    )


@keras.saving.register_keras_serializable(package="cpc_tf")
class PixelCNN(layers.Layer):
    """Causal context network: `[B, H, W, D]` -> `[B, H, W, D]`.

    Args:
        num_blocks: residual blocks (5 in the paper).
        hidden_dim: width inside each block (256 in the paper).
    """

    def __init__(self, num_blocks=5, hidden_dim=256, **kwargs):
        super().__init__(**kwargs)
        self.num_blocks = num_blocks
        self.hidden_dim = hidden_dim
        self.blocks = []

    def build(self, input_shape):
        depth = input_shape[-1]
        shape = tuple(input_shape)
        for index in range(self.num_blocks):
            block = [
                layers.Conv2D(
                    self.hidden_dim,
                    1,
                    dtype=self.dtype_policy,
                    name=f"block{index}_in",
                ),
                layers.Conv2D(
                    self.hidden_dim,
                    (1, 3),
                    padding="same",
                    dtype=self.dtype_policy,
                    name=f"block{index}_row",
                ),
                layers.ZeroPadding2D(
                    ((1, 0), (0, 0)),
                    dtype=self.dtype_policy,
                    name=f"block{index}_pad_top",
                ),
                layers.Conv2D(
                    self.hidden_dim,
                    (2, 1),
                    padding="valid",
                    dtype=self.dtype_policy,
                    name=f"block{index}_column",
                ),
                layers.Conv2D(
                    depth,
                    1,
                    dtype=self.dtype_policy,
                    name=f"block{index}_out",
                ),
            ]
            hidden_shape = shape[:-1] + (self.hidden_dim,)
            padded_shape = (shape[0], None, shape[2], self.hidden_dim)
            block[0].build(shape)
            block[1].build(hidden_shape)
            block[3].build(padded_shape)
            block[4].build(hidden_shape)
            self.blocks.extend(block)

    def call(self, latents):
        residual = latents
        for start in range(0, len(self.blocks), 5):
            conv_in, conv_row, pad_top, conv_column, conv_out = self.blocks[
                start : start + 5
            ]
            hidden = ops.relu(conv_in(residual))
            hidden = conv_row(hidden)
            hidden = ops.relu(conv_column(pad_top(hidden)))
            residual = residual + conv_out(hidden)
        return ops.relu(residual)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(num_blocks=self.num_blocks, hidden_dim=self.hidden_dim)
        return config
