"""Rematerialisation (`--remat`): equal values and gradients, the same
variables, one device and two replicas in graph mode, with micro-batches,
and the shipped encoder."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import (
    FAST,
    ROOT,
    TWO_STACK_BACKBONE,
    parse,
)
from test_tasks import train

import cpc_tf
from cpc_tf.config import FlagError
from cpc_tf.models import encoders, remat

MODES = ("blocks", "stages")


def backbone_gradients(backbone, mode, images, compiled):
    forward = remat.rematerialized(backbone, mode)

    def grads(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(forward(x)))
        return loss, tape.gradient(loss, backbone.trainable_variables)

    if compiled:
        grads = tf.function(grads)
    loss, grads = grads(images)
    return float(loss), [g.numpy() for g in grads]


def test_segments_cut_every_block_and_share_the_weights():
    backbone = encoders.resnet_v2(**dict(TWO_STACK_BACKBONE, blocks=(2, 3)))
    head, stacks, tail = remat.segments(backbone)
    assert [[b.name for b in s] for s in stacks] == [
        ["stack1_block1", "stack1_block2"],
        ["stack2_block1", "stack2_block2", "stack2_block3"],
    ]
    owned = {id(v) for v in backbone.weights}
    parts = [head, tail] + [b for s in stacks for b in s]
    assert {id(v) for p in parts for v in p.weights} == owned
    assert remat.segments(backbone)[0] is head


def test_a_backbone_without_blocks_is_refused():
    inputs = keras.Input((4, 4, 3))
    plain = keras.Model(inputs, keras.layers.Conv2D(2, 1)(inputs))
    with pytest.raises(ValueError, match="stack<i>_block<j>_add"):
        remat.rematerialized(plain, "blocks")
    with pytest.raises(ValueError, match="Unknown remat mode"):
        remat.rematerialized(plain, "layers")


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_gradients_equal_no_remat(mode, compiled):
    keras.utils.set_random_seed(0)
    backbone = encoders.resnet_v2(**TWO_STACK_BACKBONE)
    images = np.random.default_rng(0).uniform(-1, 1, (3, 8, 8, 3))
    images = tf.constant(images.astype("float32"))
    loss, expected = backbone_gradients(backbone, "none", images, compiled)
    got_loss, got = backbone_gradients(backbone, mode, images, compiled)
    np.testing.assert_allclose(got_loss, loss, rtol=1e-6)
    assert len(got) == len(expected) == len(backbone.trainable_variables)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def two_stacks(mode):
    return dict(backbone=TWO_STACK_BACKBONE, remat=mode)


def test_updates_equal_under_mirrored_strategy(tmp_path, two_replicas):
    # The trainer's compiled loop on two replicas (graph mode), global
    # negatives, the clip and the Polyak average; stages with micro-batches.
    whole = train(
        two_replicas, "global", 1, tmp_path / "none", **two_stacks("none")
    )
    for mode, microbatches in (("blocks", 1), ("stages", 2)):
        got = train(
            two_replicas,
            "global",
            microbatches,
            tmp_path / mode,
            **two_stacks(mode),
        )
        np.testing.assert_allclose(
            got[2]["first_loss"], whole[2]["first_loss"], rtol=1e-6
        )
        assert any(not np.array_equal(a, b) for a, b in zip(got[0], got[1]))
        for a, b in zip(got[1], whole[1]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_the_setting_round_trips_and_old_configs_load():
    encoder = encoders.PatchEncoder(
        encoders.resnet_v2(**TWO_STACK_BACKBONE), remat="stages"
    )
    config = encoder.get_config()
    assert config["remat"] == "stages"
    assert encoders.PatchEncoder.from_config(config).remat == "stages"
    del config["remat"]
    assert encoders.PatchEncoder.from_config(config).remat == "none"
    with pytest.raises(ValueError, match="Unknown remat mode"):
        encoders.PatchEncoder(encoder.backbone, remat="all")


def test_the_shipped_encoder_trains_alike_with_remat():
    # The CIFAR-10 encoder of results/ (saved before --remat existed):
    # its variables are found by the cut-out blocks, gradients equal.
    run_dir = os.path.join(ROOT, "results", "report_cifar10", "pretrain")
    backbone = cpc_tf.load_encoder(run_dir, kind="patches").layers[-1].backbone
    images = np.random.default_rng(1).uniform(-1, 1, (2, 16, 16, 3))
    images = tf.constant(images.astype("float32"))
    _, expected = backbone_gradients(backbone, "none", images, False)
    _, got = backbone_gradients(backbone, "blocks", images, False)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_the_flag_is_checked_and_reaches_the_encoder():
    from cpc_tf.training import builders

    with pytest.raises(FlagError, match="--remat"):
        parse(f"--flagfile={ROOT}/flags/demo.cfg", *FAST, "--remat=all")
    config = parse(f"--flagfile={ROOT}/flags/demo.cfg", *FAST, "--remat=blocks")
    assert builders.build_cpc_model(config).encoder.remat == "blocks"
