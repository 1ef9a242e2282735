"""The CPC InfoNCE loss of the appendix pseudocode, in `keras.ops`.

Row `r` of the predictions scores the target at row `r + offset` of the same
column and image (the positive) against every target of the batch (all
`B * H * W` of them: other images and the other positions of the same image
are the negatives). Logits are always computed in float32, so bfloat16
inputs give a float32 loss that is as stable as a float32 run.

The `[N, B * H * W]` logits grow quadratically with the batch; `chunk_size`
splits the prediction rows into chunks of that many rows (same value and
gradients), so no single logits matrix is larger than `chunk_size` rows.
"""

import keras
from keras import ops


def _flatten_predictions(preds, offset):
    """`[B, H, W, D]` -> the `[B * (H - offset) * W, D]` rows that predict."""
    height = ops.shape(preds)[1]
    depth = ops.shape(preds)[-1]
    return ops.reshape(preds[:, : height - offset], (-1, depth))


def positive_indices(batch, height, width, offset):
    """Flat target index of each prediction's positive, `[B*(H-off)*W]`.

    Row `r`, column `c` of image `b` predicts the target at
    `b * H * W + (r + offset) * W + c`, as in the appendix pseudocode.
    """
    rows = height - offset
    index = ops.arange(batch * rows * width, dtype="int32")
    image = index // (rows * width)
    position = index % (rows * width)
    return image * height * width + offset * width + position


def _logits(preds_flat, targets_flat):
    return ops.matmul(
        ops.cast(preds_flat, "float32"),
        ops.transpose(ops.cast(targets_flat, "float32")),
    )


def info_nce_terms(preds, targets, offset, chunk_size=None):
    """Loss and top-1 accuracy of the positive, both float32 scalars.

    Args:
        preds: `[B, H, W, D]` predictions for offset `offset`.
        targets: `[B, H, W, D]` targets of this replica.
        offset: rows ahead that row `r` predicts (`i + 1` in the appendix).
        chunk_size: optional number of prediction rows per chunk.

    Returns:
        `(loss, accuracy)`: mean softmax cross-entropy over the predicting
        positions and the fraction whose positive has the largest logit.
    """
    batch, height, width, depth = ops.shape(targets)
    if not 0 < offset < height:
        raise ValueError(
            f"offset must be in [1, {height - 1}] for a grid of height "
            f"{height}, got {offset}."
        )
    preds_flat = _flatten_predictions(preds, offset)
    target_bank = ops.reshape(targets, (-1, depth))
    labels = positive_indices(batch, height, width, offset)
    num_rows = ops.shape(preds_flat)[0]
    if chunk_size is None:
        starts, chunk_size = [0], None
    else:
        starts = range(0, num_rows, chunk_size)
    loss_sum = ops.zeros((), "float32")
    correct = ops.zeros((), "float32")
    for start in starts:
        stop = None if chunk_size is None else start + chunk_size
        logits = _logits(preds_flat[start:stop], target_bank)
        chunk_labels = labels[start:stop]
        loss_sum += ops.sum(
            keras.losses.sparse_categorical_crossentropy(
                chunk_labels, logits, from_logits=True
            )
        )
        hits = ops.equal(
            ops.cast(ops.argmax(logits, axis=-1), "int32"), chunk_labels
        )
        correct += ops.sum(ops.cast(hits, "float32"))
    num_rows = ops.cast(ops.shape(labels)[0], "float32")
    return loss_sum / num_rows, correct / num_rows


def info_nce(preds, targets, offset):
    """Mean InfoNCE loss of predicting `offset` rows ahead.

    Args:
        preds: `[B, H, W, D]`; only rows `r < H - offset` are used.
        targets: `[B, H, W, D]`; all `B * H * W` are candidates.
        offset: `i + 1` in the appendix pseudocode.

    Returns:
        A float32 scalar.
    """
    return info_nce_terms(preds, targets, offset)[0]
