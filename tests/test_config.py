"""The configuration groups: each rejects a value that makes no sense,
naming its flag, and a whole configuration survives a JSON round trip."""

import pytest

from cpc_tf import config
from cpc_tf.config import (
    DataConfig,
    FlagError,
    KnnConfig,
    ModelConfig,
    OptimConfig,
    PretrainConfig,
    RunConfig,
)


@pytest.mark.parametrize(
    "group,values,flag",
    [
        (DataConfig, dict(holdout=-1), "--holdout"),
        (DataConfig, dict(validation=100), "--validation"),
        (DataConfig, dict(eval_data="holdout"), "--eval_data"),
        (DataConfig, dict(crop_min_area=0.0), "--crop_min_area"),
        (DataConfig, dict(randaugment_ops=("blur",)), "--randaugment_ops"),
        (DataConfig, dict(randaugment_magnitude=11), "--randaugment_magni"),
        (DataConfig, dict(grayscale_prob=-0.1), "--grayscale_prob"),
        (ModelConfig, dict(encoder_depth=33), "--encoder_depth"),
        (
            ModelConfig,
            dict(encoder_depth=0, encoder_blocks=(1, 1, 1)),
            "--encoder_blocks",
        ),
        (ModelConfig, dict(steps_to_ignore=3), "--steps_to_predict"),
        (OptimConfig, dict(optimizer="lamb"), "--optimizer"),
        (OptimConfig, dict(learning_rate=0.0), "--learning_rate"),
        (OptimConfig, dict(lr_schedule="step"), "--lr_schedule"),
        (OptimConfig, dict(ema_decay=1.0), "--ema_decay"),
        (OptimConfig, dict(weight_decay_type="l1"), "--weight_decay_type"),
        (RunConfig, dict(batch_size=0), "--batch_size"),
        (RunConfig, dict(steps=0, epochs=0), "--steps"),
        (RunConfig, dict(min_steps=-1), "--min_steps"),
        (RunConfig, dict(mixed_precision="int8"), "--mixed_precision"),
        (RunConfig, dict(steps_per_loop=0), "--steps_per_loop"),
        (KnnConfig, dict(knn_k=0), "--knn_k"),
        (KnnConfig, dict(knn_temperature=0.0), "--knn_temperature"),
    ],
)
def test_each_group_names_the_flag_it_rejects(group, values, flag):
    with pytest.raises(FlagError, match=flag):
        group(**values)


def test_the_whole_config_checks_the_grid_against_the_offsets():
    data = DataConfig(crop_size=28, image_size=32, patch_size=8, patch_stride=4)
    assert data.grid_size == 6
    with pytest.raises(FlagError, match="6x6 grid"):
        PretrainConfig(data=data, model=ModelConfig(steps_to_predict=6))


def test_a_config_round_trips_through_json(tmp_path):
    original = PretrainConfig(
        data=DataConfig(randaugment_ops=("rotate", "cutout")),
        model=ModelConfig(encoder_depth=0, encoder_blocks=(2, 1)),
        run=RunConfig(mixed_precision="bfloat16", steps=7),
    )
    path = str(tmp_path / "config.json")
    original.to_json(path)
    restored = config.read_json(PretrainConfig, path)
    assert restored == original
    assert restored.model.encoder_blocks == (2, 1)  # JSON lists -> tuples


def test_partial_dicts_keep_the_defaults_and_old_spellings_still_parse():
    restored = config.from_dict(
        PretrainConfig, {"run": {"mixed_precision": "true"}}
    )
    assert restored.run.mixed_precision == "bfloat16"
    assert restored.run.dtype_policy == "mixed_bfloat16"
    assert restored.data == DataConfig()


def test_the_package_keeps_every_public_name():
    for name in config.__all__:
        assert getattr(config, name) is not None
    assert issubclass(FlagError, ValueError)
