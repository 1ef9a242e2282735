"""Damaged checkpoints: resume from the newest good one, never start over
silently, never lose a damaged file; on a local directory and `ram://`."""

import os
import uuid

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import RegressionTask, regression_data, run_steps
from tensorflow.python.ops import gen_io_ops

from cpc_tf.config import FlagError
from cpc_tf.training import checkpoints


def make_task():
    return RegressionTask(keras.optimizers.Adam(0.1))


@pytest.fixture(params=["local", "ram"])
def model_dir(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "run")
    return f"ram://{uuid.uuid4().hex}/run"


def train(model_dir, steps, **options):
    """Trains the regression task to `steps`, a checkpoint every 2 steps;
    returns `(final weights, fit result)`."""
    options.setdefault("checkpoint_every", 2)
    options.setdefault("keep_checkpoints", 5)
    _, final, result, _ = run_steps(
        tf.distribute.get_strategy(),
        make_task,
        regression_data(),
        model_dir,
        steps=steps,
        **options,
    )
    return final, result


def ckpt_dir(model_dir):
    return os.path.join(model_dir, "checkpoints")


def ckpt_file(model_dir, step, kind):
    """The path of checkpoint `step`'s `index` or `data` file."""
    directory = ckpt_dir(model_dir)
    suffix = ".index" if kind == "index" else ".data-"
    (name,) = [
        n
        for n in tf.io.gfile.listdir(directory)
        if n.startswith(f"ckpt-{step}{suffix}")
    ]
    return os.path.join(directory, name)


def truncate(path):
    with tf.io.gfile.GFile(path, "rb") as f:
        data = f.read()
    tf.io.gfile.remove(path)  # ram:// appends to a file opened with "wb"
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(data[: len(data) // 2])


def write_text(path, text):
    if tf.io.gfile.exists(path):
        tf.io.gfile.remove(path)
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(text)


def snapshot(directory):
    """`{relative path: bytes}` of every file below `directory`."""
    files = {}
    for root, _, names in tf.io.gfile.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with tf.io.gfile.GFile(path, "rb") as f:
                files[os.path.relpath(path, directory)] = f.read()
    return files


def damage_newest_data(model_dir):
    truncate(ckpt_file(model_dir, 6, "data"))


def remove_newest_index(model_dir):
    tf.io.gfile.remove(ckpt_file(model_dir, 6, "index"))


def remove_newest_data(model_dir):
    tf.io.gfile.remove(ckpt_file(model_dir, 6, "data"))


DAMAGE = {
    "truncated_data": damage_newest_data,
    "missing_index": remove_newest_index,
    "missing_data": remove_newest_data,
}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The weights of 8 steps without interruption."""
    final, _ = train(str(tmp_path_factory.mktemp("straight")), 8)
    return final


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(
    model_dir, damage, uninterrupted
):
    train(model_dir, 6)
    DAMAGE[damage](model_dir)
    final, result = train(model_dir, 8)
    assert result["start_step"] == 4 and result["steps"] == 8
    record = result["checkpoints"]
    assert record["restored"].endswith("ckpt-4")
    (damaged,) = record["damaged"]
    assert damaged["checkpoint"] == "ckpt-6" and damaged["reason"]
    # Moved aside, never deleted or overwritten by the new ckpt-6.
    aside = os.path.join(ckpt_dir(model_dir), "damaged", "1")
    assert damaged["moved_to"] and all(
        os.path.dirname(path) == aside for path in damaged["moved_to"]
    )
    assert sorted(tf.io.gfile.listdir(aside)) == sorted(
        os.path.basename(path) for path in damaged["moved_to"]
    )
    assert tf.io.gfile.exists(ckpt_file(model_dir, 8, "index"))
    for a, b in zip(final, uninterrupted):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_a_garbled_state_file_loses_nothing(model_dir, uninterrupted):
    train(model_dir, 6)
    write_text(os.path.join(ckpt_dir(model_dir), "checkpoint"), "garbage{{")
    final, result = train(model_dir, 8)
    assert result["start_step"] == 6
    assert result["checkpoints"]["damaged"] == []
    state = tf.train.get_checkpoint_state(ckpt_dir(model_dir))
    assert state.model_checkpoint_path.endswith("ckpt-8")
    for a, b in zip(final, uninterrupted):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_a_state_file_naming_a_checkpoint_that_is_gone(model_dir):
    train(model_dir, 6)
    tf.compat.v1.train.update_checkpoint_state(
        ckpt_dir(model_dir),
        "ckpt-10",
        all_model_checkpoint_paths=["ckpt-4", "ckpt-6", "ckpt-10"],
    )
    _, result = train(model_dir, 8)
    assert result["start_step"] == 6
    (gone,) = result["checkpoints"]["damaged"]
    assert gone == dict(
        checkpoint="ckpt-10", reason="no .index file", moved_to=[]
    )


def test_the_state_file_is_rewritten_to_what_restored(model_dir):
    train(model_dir, 6)
    damage_newest_data(model_dir)
    checkpoint = tf.train.Checkpoint(step=tf.Variable(0, dtype=tf.int64))
    record = checkpoints.resume(checkpoint, ckpt_dir(model_dir))
    assert record["restored"].endswith("ckpt-4")
    state = tf.train.get_checkpoint_state(ckpt_dir(model_dir))
    assert state.model_checkpoint_path.endswith("ckpt-4")
    assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == [
        "ckpt-2",
        "ckpt-4",
    ]


def test_all_checkpoints_damaged_fails_and_changes_nothing(model_dir):
    train(model_dir, 6)
    for step in (2, 4, 6):
        truncate(ckpt_file(model_dir, step, "data"))
    before = snapshot(model_dir)
    with pytest.raises(checkpoints.CheckpointError) as error:
        train(model_dir, 8)
    message = str(error.value)
    assert isinstance(error.value, FlagError)
    assert message.startswith("--model_dir: ") and "\n" not in message
    for step in (2, 4, 6):
        assert f"ckpt-{step}: " in message
    assert "--restart=true" in message
    assert snapshot(model_dir) == before


def test_restart_starts_over_and_keeps_the_old_checkpoints(model_dir):
    train(model_dir, 6)
    for step in (2, 4, 6):
        truncate(ckpt_file(model_dir, step, "data"))
    old = snapshot(ckpt_dir(model_dir))
    _, result = train(model_dir, 4, restart=True)
    assert result["start_step"] == 0 and result["steps"] == 4
    replaced = os.path.join(ckpt_dir(model_dir), "replaced", "1")
    kept = snapshot(replaced)
    for name, content in old.items():
        if name != "checkpoint":
            assert kept[name] == content
    assert len(result["checkpoints"]["replaced"]) == len(old) - 1


class SaveKilled(BaseException):
    """Stands for the process dying inside a save."""


def test_a_save_killed_half_way_resumes_from_the_one_before(
    model_dir, monkeypatch, uninterrupted
):
    merge = gen_io_ops.merge_v2_checkpoints

    def killed_at_step_6(checkpoint_prefixes, destination_prefix, **kwargs):
        if tf.compat.as_str(destination_prefix.numpy()).endswith("ckpt-6"):
            raise SaveKilled()
        return merge(checkpoint_prefixes, destination_prefix, **kwargs)

    monkeypatch.setattr(gen_io_ops, "merge_v2_checkpoints", killed_at_step_6)
    with pytest.raises(SaveKilled):
        train(model_dir, 8)
    monkeypatch.setattr(gen_io_ops, "merge_v2_checkpoints", merge)
    # The data was written under ckpt-6_temp/, never renamed into place.
    names = tf.io.gfile.listdir(ckpt_dir(model_dir))
    assert not any(n.startswith("ckpt-6.") for n in names), names
    final, result = train(model_dir, 8)
    assert result["start_step"] == 4
    (interrupted,) = result["checkpoints"]["damaged"]
    assert interrupted["checkpoint"] == "ckpt-6"
    assert interrupted["moved_to"][0].endswith("damaged/1/ckpt-6_temp")
    for a, b in zip(final, uninterrupted):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_pruning_keeps_the_restored_checkpoint_until_a_newer_is_whole(
    tmp_path,
):
    # Local only: TF's manager deletes by glob, which ram:// does not do.
    model_dir = str(tmp_path)
    train(model_dir, 6, keep_checkpoints=2)
    damage_newest_data(model_dir)
    train(model_dir, 8, keep_checkpoints=2)
    steps = sorted(checkpoints.step_files(ckpt_dir(model_dir)))
    assert steps == [6, 8]  # ckpt-4 went only after ckpt-6 and 8 were whole
    for step in steps:
        assert (
            checkpoints.verify(checkpoints.path_of(ckpt_dir(model_dir), step))
            is None
        )


def test_a_directory_without_checkpoints_starts_at_step_0(model_dir):
    _, result = train(model_dir, 2)
    assert result["start_step"] == 0
    assert result["checkpoints"] == dict(restored=None, damaged=[], replaced=[])
