"""The CPC InfoNCE loss of the appendix pseudocode, in `keras.ops`.

Row `r` of the predictions scores the target at row `r + offset` of the same
column and image (the positive) against every target of the batch (all
`B * H * W` of them: other images and the other positions of the same image
are the negatives). Logits are always computed in float32, so bfloat16
inputs give a float32 loss that is as stable as a float32 run.

The `[N, B * H * W]` logits grow quadratically with the batch. With
`chunk_size`, a loop computes them `chunk_size` prediction rows at a time,
forward and backward: a custom gradient recomputes each chunk's softmax
instead of keeping all logits for the backward pass, so the loss needs
memory for one `[chunk_size, B * H * W]` block (same value and gradients).
"""

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


def _cross_entropy_and_hits(logits, labels):
    """Per-row softmax cross-entropy and top-1 hits of `[n, N]` logits."""
    positive = ops.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
    loss = ops.logsumexp(logits, axis=-1) - positive
    hits = ops.equal(ops.cast(ops.argmax(logits, axis=-1), "int32"), labels)
    return loss, ops.cast(hits, "float32")


def _chunked_sums(preds_flat, targets_flat, labels, chunk_size):
    """Summed loss and hits over rows, `chunk_size` rows at a time.

    `preds_flat`: float32 `[n, D]`; `targets_flat`: float32 `[N, D]`.
    """
    num_rows = ops.shape(preds_flat)[0]
    num_targets = ops.shape(targets_flat)[0]
    num_chunks = -(-num_rows // chunk_size)
    padding = num_chunks * chunk_size - num_rows
    preds_flat = ops.pad(preds_flat, ((0, padding), (0, 0)))
    labels = ops.pad(labels, ((0, padding),))
    valid = ops.pad(ops.ones((num_rows,), "float32"), ((0, padding),))

    def chunk(index, values):
        start = index * chunk_size
        return ops.slice(
            values,
            (start,) + (0,) * (len(values.shape) - 1),
            (chunk_size,) + tuple(values.shape[1:]),
        )

    @ops.custom_gradient
    def sums(preds_padded, targets):
        def forward(index, carry):
            logits = ops.matmul(
                chunk(index, preds_padded), ops.transpose(targets)
            )
            loss, hits = _cross_entropy_and_hits(logits, chunk(index, labels))
            weight = chunk(index, valid)
            return (
                carry[0] + ops.sum(loss * weight),
                carry[1] + ops.sum(hits * weight),
            )

        zero = ops.zeros((), "float32")
        loss_sum, hit_sum = ops.fori_loop(0, num_chunks, forward, (zero, zero))

        def grad(*args, upstream=None):
            upstream = args if upstream is None else upstream
            scale = upstream[0]

            def backward(index, carry):
                d_preds, d_targets = carry
                rows = chunk(index, preds_padded)
                logits = ops.matmul(rows, ops.transpose(targets))
                one_hot = ops.one_hot(chunk(index, labels), num_targets)
                d_logits = (ops.softmax(logits, axis=-1) - one_hot) * (
                    chunk(index, valid)[:, None] * scale
                )
                d_preds = ops.slice_update(
                    d_preds,
                    (index * chunk_size, 0),
                    ops.matmul(d_logits, targets),
                )
                d_targets = d_targets + ops.matmul(
                    ops.transpose(d_logits), rows
                )
                return d_preds, d_targets

            return ops.fori_loop(
                0,
                num_chunks,
                backward,
                (ops.zeros_like(preds_padded), ops.zeros_like(targets)),
            )

        return (loss_sum, hit_sum), grad

    return sums(preds_flat, targets_flat)


def info_nce_terms(preds, targets, offset, chunk_size=None):
    """Loss and top-1 accuracy of the positive, both float32 scalars.

    Args:
        preds: `[B, H, W, D]` predictions for offset `offset`.
        targets: `[B, H, W, D]` targets of this replica.
        offset: rows ahead that row `r` predicts (`i + 1` in the appendix).
        chunk_size: optional number of prediction rows per chunk (needs
            static shapes).

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
    preds_flat = ops.cast(_flatten_predictions(preds, offset), "float32")
    targets_flat = ops.cast(ops.reshape(targets, (-1, depth)), "float32")
    labels = positive_indices(batch, height, width, offset)
    num_rows = ops.cast(ops.shape(labels)[0], "float32")
    if chunk_size is None:
        logits = ops.matmul(preds_flat, ops.transpose(targets_flat))
        loss, hits = _cross_entropy_and_hits(logits, labels)
        return ops.sum(loss) / num_rows, ops.sum(hits) / num_rows
    loss_sum, hit_sum = _chunked_sums(
        preds_flat, targets_flat, labels, chunk_size
    )
    return loss_sum / num_rows, hit_sum / num_rows


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
