"""Entry-point plumbing: one-line errors, preemption, sessions."""

import keras
import pytest

from cpc_tf.config import DataConfig, FlagError, RunConfig
from cpc_tf.protocols import runtime
from cpc_tf.training import preemption


def test_prepare_model_dir(tmp_path):
    made = runtime.prepare_model_dir(str(tmp_path / "a" / "b"))
    assert (tmp_path / "a" / "b").is_dir() and made.endswith("b")
    (tmp_path / "file").write_text("x")
    with pytest.raises(FlagError, match="--model_dir: .* is a file"):
        runtime.prepare_model_dir(str(tmp_path / "file"))
    with pytest.raises(FlagError, match="--export_dir"):
        runtime.prepare_model_dir("", flag="export_dir")


@pytest.mark.parametrize(
    "spec",
    [
        "nope:x",
        "folder:/no/such/folder",
        "tfrecord:/no/such/*.tfrecord",
        "tfds:no_such_dataset_xyz:train",
    ],
)
def test_check_sources_names_the_flag_of_a_bad_source(spec):
    with pytest.raises(FlagError, match="^--train_data: "):
        runtime.check_sources(DataConfig(train_data=spec))


def test_check_sources_names_the_flag():
    with pytest.raises(FlagError, match="^--train_data: .*folder"):
        runtime.check_sources(DataConfig(train_data="folder:/no/such"))
    with pytest.raises(FlagError, match="^--eval_data"):
        runtime.check_sources(DataConfig(eval_data="nope"))
    infos = runtime.check_sources(DataConfig())
    assert infos["eval_data"].num_examples == 1000


def test_session_sets_and_restores_the_policy():
    run = RunConfig(mixed_precision="bfloat16", batch_size=4)
    with runtime.session(run):
        assert keras.mixed_precision.dtype_policy().name == "mixed_bfloat16"
    assert keras.mixed_precision.dtype_policy().name == "float32"
    assert RunConfig(mixed_precision="true").dtype_policy == "mixed_bfloat16"
    assert RunConfig(mixed_precision=False).mixed_precision == "float32"
    with pytest.raises(FlagError, match="--mixed_precision"):
        RunConfig(mixed_precision="float8")


def test_entry_point_errors_and_preemption(capsys, monkeypatch):
    monkeypatch.setattr(preemption, "install", lambda: None)

    def bad(argv):
        raise FlagError("--holdout: too large.")

    with pytest.raises(SystemExit, match="^error: --holdout: too large"):
        runtime.entry_point(bad)([])

    def preempted(argv):
        raise preemption.Preempted("SIGTERM before training started")

    assert runtime.entry_point(preempted)([]) is None
    assert "preempted" in capsys.readouterr().out
