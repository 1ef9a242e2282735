"""InfoNCE against a NumPy transcription of the appendix pseudocode."""

import numpy as np
import pytest
from keras import ops

from cpc_tf.models import losses


def pseudocode_term(preds, targets, i):
    """The appendix's loss term for step `i`, written with its own names.

    `targets.shape[:-1]` is read as (batch_dim, col_dim, rows) exactly as in
    the pseudocode; preds are the already-projected, already-scaled
    predictions for this step.
    """
    batch_dim, col_dim, rows = targets.shape[:-1]
    target_dim = targets.shape[-1]
    targets = targets.reshape(-1, target_dim).astype(np.float64)
    col_dim_i = col_dim - i - 1
    total_elements = batch_dim * col_dim_i * rows
    preds_i = preds[:, : -(i + 1), :, :].reshape(-1, target_dim)
    logits = preds_i.astype(np.float64) @ targets.T
    b = np.arange(total_elements) // (col_dim_i * rows)
    col = np.arange(total_elements) % (col_dim_i * rows)
    labels = b * col_dim * rows + (i + 1) * rows + col
    logits = logits - logits.max(axis=1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return -log_probs[np.arange(total_elements), labels].mean()


@pytest.mark.parametrize(
    "batch,height,width,depth,offset",
    [(2, 6, 6, 8, 3), (3, 5, 4, 16, 1), (1, 7, 3, 4, 2), (4, 4, 6, 8, 3)],
)
def test_info_nce_equals_pseudocode(batch, height, width, depth, offset):
    rng = np.random.default_rng(batch * 100 + height * 10 + offset)
    preds = rng.normal(size=(batch, height, width, depth)).astype("float32")
    targets = rng.normal(size=(batch, height, width, depth)).astype("float32")
    expected = pseudocode_term(preds, targets, offset - 1)
    loss = ops.convert_to_numpy(losses.info_nce(preds, targets, offset))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_info_nce_bfloat16_inputs_give_float32_loss():
    rng = np.random.default_rng(0)
    preds = rng.normal(size=(2, 6, 6, 8)).astype("float32")
    targets = rng.normal(size=(2, 6, 6, 8)).astype("float32")
    loss = losses.info_nce(
        ops.cast(preds, "bfloat16"), ops.cast(targets, "bfloat16"), 3
    )
    assert loss.dtype == "float32"
    # Only the rounding of the inputs to bfloat16 differs.
    expected = pseudocode_term(preds, targets, 2)
    np.testing.assert_allclose(ops.convert_to_numpy(loss), expected, rtol=2e-2)
    big = ops.cast(preds * 300.0, "bfloat16")
    assert np.isfinite(ops.convert_to_numpy(losses.info_nce(big, big, 1)))


def test_positive_found_gives_full_accuracy():
    rng = np.random.default_rng(1)
    targets = rng.normal(size=(2, 5, 3, 32)).astype("float32")
    preds = np.zeros_like(targets)
    preds[:, :-2] = 50.0 * targets[:, 2:]
    loss, accuracy = losses.info_nce_terms(preds, targets, 2)
    assert float(accuracy) == 1.0
    assert float(loss) < 1e-3


def test_chunked_equals_unchunked_value_and_gradient():
    import tensorflow as tf

    rng = np.random.default_rng(2)
    preds = tf.Variable(rng.normal(size=(3, 6, 6, 8)).astype("float32"))
    targets = tf.Variable(rng.normal(size=(3, 6, 6, 8)).astype("float32"))
    results = []
    for chunk in (None, 7, 32):
        with tf.GradientTape() as tape:
            loss, _ = losses.info_nce_terms(preds, targets, 3, chunk_size=chunk)
        grads = tape.gradient(loss, [preds, targets])
        results.append((loss.numpy(), [g.numpy() for g in grads]))
    for loss, grads in results[1:]:
        np.testing.assert_allclose(loss, results[0][0], rtol=1e-6)
        for grad, reference in zip(grads, results[0][1]):
            np.testing.assert_allclose(grad, reference, rtol=1e-5, atol=1e-7)


def test_chunked_in_a_compiled_step():
    import tensorflow as tf

    rng = np.random.default_rng(4)
    preds = tf.Variable(rng.normal(size=(4, 6, 6, 8)).astype("float32"))
    targets = tf.Variable(rng.normal(size=(4, 6, 6, 8)).astype("float32"))

    @tf.function(jit_compile=False)
    def step(chunk):
        with tf.GradientTape() as tape:
            loss, accuracy = losses.info_nce_terms(
                preds, targets, 2, chunk_size=chunk
            )
        return loss, accuracy, tape.gradient(loss, [preds, targets])

    loss, accuracy, grads = step(None)
    chunked_loss, chunked_accuracy, chunked_grads = step(10)
    np.testing.assert_allclose(chunked_loss, loss, rtol=1e-6)
    np.testing.assert_allclose(chunked_accuracy, accuracy)
    for got, expected in zip(chunked_grads, grads):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_offset_out_of_range():
    x = np.zeros((1, 3, 3, 4), "float32")
    with pytest.raises(ValueError, match="offset"):
        losses.info_nce(x, x, 3)
