"""`python -m cpc_tf.finetune`: appendix C.2's two phases."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags as absl_flags
from helpers import (
    ROOT,
    check_results,
    make_pretrained_dir,
    tiny_run,
    weights_equal,
)

from cpc_tf import evaluation
from cpc_tf.config import DataConfig, OptimConfig
from cpc_tf.protocols import finetune
from cpc_tf.rundir import artifacts
from cpc_tf.training import trainer
from cpc_tf.training.optimizers import make_optimizer


def finetune_config(pretrained_dir, model_dir, phase1=2, phase2=2):
    geometry = dict(image_size=16, crop_size=16, patch_size=16, patch_stride=16)
    return evaluation.FinetuneConfig(
        data=DataConfig(**geometry, label_fraction=2, shuffle_buffer=64),
        optim=OptimConfig(
            optimizer="sgd",
            learning_rate=0.05,
            beta1=0.9,
            clip_global_norm=0,
            ema_decay=0,
        ),
        run=tiny_run(model_dir, steps=0),
        options=evaluation.FinetuneOptions(
            pretrained_dir=pretrained_dir,
            dropout=0.1,
            classifier_blocks=1,
            classifier_hidden=8,
            classifier_bottleneck=4,
            phase1_steps=phase1,
            phase2_steps=phase2,
            phase1_epochs=0,
            phase2_epochs=0,
            encoder_learning_rate=1e-2,
            eval_batch_size=500,
            augment=False,  # faster; the augmented path runs in supervised
        ),
    )


def _slot_owners(optimizer):
    """Paths of the variables that have slots: Keras names a slot
    `<variable path, "/" -> "_">_<slot>` (momentum, velocity)."""
    return {
        v.name.rsplit("_", 1)[0]
        for v in optimizer.variables
        if v.name not in ("iteration", "learning_rate")
    }


def test_phase2_optimizers_update_only_their_own_variables(tmp_path):
    pretrained = make_pretrained_dir(tmp_path / "pretrained")
    config = finetune_config(pretrained, str(tmp_path / "run"))
    pretrain_config = evaluation.read_pretrained(
        pretrained, artifacts.BACKBONE_FILE, False
    )
    keras.utils.set_random_seed(0)
    model, backbone, head = finetune.build_model(config, pretrain_config, 3)
    sgd = make_optimizer(config.optim, 2)
    adam = make_optimizer(finetune.encoder_optim(config, pretrain_config), 2)
    assert isinstance(sgd, keras.optimizers.SGD)
    assert isinstance(adam, keras.optimizers.Adam) and adam.beta_1 == 0.8
    task = evaluation.ClassifierTask(
        model, backbone, head, sgd, train_encoder=True, encoder_optimizer=adam
    )
    head_before = [v.numpy() for v in head.trainable_variables]
    encoder_before = [v.numpy() for v in backbone.trainable_variables]
    loop = trainer.Trainer(
        tf.distribute.get_strategy(),
        task,
        trainer.TrainerOptions(str(tmp_path / "run"), steps=2, verbose=False),
    )
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (8, 16, 16, 3)).astype("float32")
    labels = rng.integers(0, 3, 8)
    data = tf.data.Dataset.from_tensor_slices((images, labels))
    loop.fit(lambda ctx: data.batch(4).repeat())
    assert int(sgd.iterations) == int(adam.iterations) == 2
    # Each optimizer holds slots for exactly its own group's variables.
    head_paths = {v.path.replace("/", "_") for v in head.trainable_variables}
    encoder_paths = {
        v.path.replace("/", "_") for v in backbone.trainable_variables
    }
    assert not head_paths & encoder_paths
    assert _slot_owners(sgd) == head_paths
    assert _slot_owners(adam) == encoder_paths
    for before, variables in [
        (head_before, head.trainable_variables),
        (encoder_before, backbone.trainable_variables),
    ]:
        assert not weights_equal(before, [v.numpy() for v in variables])


@pytest.mark.slow
def test_phase1_freezes_the_encoder_and_phase2_resumes_and_tunes(tmp_path):
    pretrained = make_pretrained_dir(tmp_path / "pretrained")
    saved = keras.saving.load_model(
        os.path.join(pretrained, artifacts.BACKBONE_FILE)
    ).get_weights()
    model_dir = str(tmp_path / "finetune")

    def backbone_weights():
        model = keras.saving.load_model(
            os.path.join(model_dir, evaluation.CLASSIFIER_FILE)
        )
        assert model.input_shape == (None, 16, 16, 3)
        return model.get_layer("backbone").get_weights()

    finetune.run(finetune_config(pretrained, model_dir, 2, 0), verbose=False)
    results = check_results(model_dir, "finetune")
    assert "phase2" not in results["train"] and results["steps"] == 2
    assert weights_equal(backbone_weights(), saved)
    # The same model_dir with phase 2: phase 1 is restored, not rerun.
    finetune.run(finetune_config(pretrained, model_dir, 2, 2), verbose=False)
    results = check_results(model_dir, "finetune")
    assert results["steps"] == 4 and results["labelled_examples"] == 80
    assert results["train"]["phase1"]["first_loss"] is None  # restored
    assert results["train"]["phase2"]["steps"] == 2
    assert results["checkpoint"].startswith(os.path.join(model_dir, "phase2"))
    # Without validation images nothing is selected: the last weights.
    assert results["selected_phase"] is None
    assert not weights_equal(backbone_weights(), saved)


def test_the_better_phase_is_tested():
    class Kept:
        def __init__(self, top1):
            self.top1 = top1

        def record(self):
            return None if self.top1 is None else {"val_top1": self.top1}

    one, two = Kept(0.9), Kept(0.8)
    assert finetune.best_selection({"phase1": one, "phase2": two}) == (
        "phase1",
        one,
    )
    tie = Kept(0.9)
    assert finetune.best_selection({"phase1": one, "phase2": tie})[0] == (
        "phase2"
    )
    assert finetune.best_selection({"phase1": None, "phase2": Kept(None)}) == (
        None,
        None,
    )


def test_missing_backbone_fails_before_compute(tmp_path):
    pretrained = make_pretrained_dir(tmp_path / "pretrained")
    os.remove(os.path.join(pretrained, artifacts.BACKBONE_FILE))
    model_dir = tmp_path / "finetune"
    with pytest.raises(evaluation.FlagError, match="no backbone.keras"):
        finetune.run(finetune_config(pretrained, str(model_dir)))
    assert not model_dir.exists()


def test_flagfile_sets_a_small_classifier():
    values = absl_flags.FlagValues()
    finetune.define_flags(values)
    values(["finetune", f"--flagfile={ROOT}/flags/finetune_demo.cfg"])
    config = finetune.parse_config(values)
    assert config.options.pretrained_dir == "runs/demo"
    assert config.options.classifier_blocks < 11
    assert config.optim.optimizer == "sgd"
    values = absl_flags.FlagValues()
    finetune.define_flags(values)
    values(["finetune"])
    options = finetune.parse_config(values).options
    assert (options.classifier_blocks, options.classifier_hidden) == (11, 4096)
    assert options.classifier_bottleneck == 1024
