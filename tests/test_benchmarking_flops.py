"""Model FLOPs of a training step and the matmul peak."""

import keras
import pytest
import tensorflow as tf
from helpers import ROOT

from cpc_tf.benchmarking import flops as flops_lib
from cpc_tf.benchmarking import jobs


def test_dense_flops_match_a_hand_count():
    batch, units_in, units_out = 8, 16, 4
    layer = keras.layers.Dense(units_out, dtype="float32")
    layer.build((batch, units_in))

    def forward_backward(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(x))
        return loss, tape.gradient(loss, layer.trainable_variables)

    flops = flops_lib.count_flops(
        forward_backward, tf.TensorSpec([batch, units_in])
    )
    # Forward and kernel gradient; the input gradient is never needed.
    assert flops["MatMul"] == 2 * (2 * batch * units_in * units_out)
    assert flops["BiasAdd"] == batch * units_out


def test_conv_flops_match_a_hand_count():
    batch, size, c_in, c_mid, c_out = 2, 6, 3, 5, 7
    convs = [
        keras.layers.Conv2D(
            width, 3, padding="same", use_bias=False, dtype="float32"
        )
        for width in (c_mid, c_out)
    ]
    model = keras.Sequential([keras.Input((size, size, c_in)), *convs])

    def forward_backward(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(x))
        return loss, tape.gradient(loss, model.trainable_variables)

    flops = flops_lib.count_flops(
        forward_backward, tf.TensorSpec([batch, size, size, c_in])
    )
    first = 2 * batch * size * size * 9 * c_in * c_mid
    second = 2 * batch * size * size * 9 * c_mid * c_out
    assert flops["Conv2D"] == first + second
    assert flops["Conv2DBackpropFilter"] == first + second
    # Only the second convolution needs its input's gradient.
    assert flops["Conv2DBackpropInput"] == second


def test_flops_in_a_loop_are_refused():
    def looped(x):
        return tf.while_loop(
            lambda i, y: i < 3, lambda i, y: (i + 1, y @ x), (0, x)
        )[1]

    with pytest.raises(ValueError, match="While"):
        flops_lib.count_flops(looped, tf.TensorSpec([4, 4]))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_matmul_peak_is_a_plausible_rate(dtype):
    rate = flops_lib.matmul_peak(dtype, size=256, repeats=2)
    assert 1e8 < rate < 1e15


def test_logits_size_of_the_cifar10_config():
    config = jobs.parse_config([f"--flagfile={ROOT}/flags/cifar10.cfg"])
    # 4 directions x offset 3: [64 * 3 * 6, 64 * 36] float32 each.
    expected = 4 * (64 * 3 * 6) * (64 * 36) * 4 / 2**20
    assert flops_lib.logits_megabytes(config, 64) == pytest.approx(expected)
    assert flops_lib.logits_megabytes(config, 128) == pytest.approx(
        4 * expected
    )


def test_matmul_flops_sum_only_the_dense_ops():
    by_op = {"Conv2D": 10, "MatMul": 5, "BiasAdd": 3, "Mul": 2}
    assert flops_lib.matmul_flops(by_op) == 15
