"""A report's archive: what it keeps, and a restore that never overwrites."""

import os

import tensorflow as tf

from cpc_tf.reporting import archive

# A finished stage's record must read back whole (a damaged one is re-run).
RECORDS = {"results.json": '{"top1": 0.5}', "summary.json": '{"steps": 1}'}


def _write(root, relative, text=None):
    if text is None:
        text = RECORDS.get(os.path.basename(relative), "x")
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _report_dir(root):
    for relative in (
        "report.json",
        "report.md",
        "report.png",
        "knn.png",
        "pretrain.cfg",
        "pretrain.log",
        "pretrain/summary.json",
        "pretrain/config.json",
        "pretrain/holdout_50_seed0.txt",
        "pretrain/encoder.keras",
        "pretrain/backbone.keras",
        "pretrain/checkpoints/ckpt-1.index",
        "pretrain/logs/events.out",
        "pretrain/features/cache.npz",
        "linear_cpc_10pct/results.json",
        "linear_cpc_10pct/labelled_10pct_seed0.txt",
        "linear_cpc_10pct/classifier.keras",
        # Unfinished: no results.json yet.
        "finetune_10pct/best.json",
        "finetune_10pct/checkpoints/ckpt-1.index",
    ):
        _write(root, relative)
    return root


def test_keeps_finished_stages_small_files_and_the_encoder(tmp_path):
    report_dir = _report_dir(tmp_path / "report")
    assert archive.kept_files(str(report_dir)) == sorted(
        [
            "knn.png",
            "linear_cpc_10pct/labelled_10pct_seed0.txt",
            "linear_cpc_10pct/results.json",
            "pretrain.cfg",
            "pretrain/backbone.keras",
            "pretrain/config.json",
            "pretrain/encoder.keras",
            "pretrain/holdout_50_seed0.txt",
            "pretrain/summary.json",
            "report.json",
            "report.md",
            "report.png",
        ]
    )


def test_save_then_restore_elsewhere_never_overwrites(tmp_path):
    report_dir = _report_dir(tmp_path / "report")
    saved = archive.save(str(report_dir), str(tmp_path / "archive"))
    assert (tmp_path / "archive" / "pretrain" / "encoder.keras").exists()
    elsewhere = tmp_path / "elsewhere"
    _write(elsewhere, "report.md", "newer")
    restored = archive.restore(str(tmp_path / "archive"), str(elsewhere))
    assert restored == [path for path in saved if path != "report.md"]
    assert (elsewhere / "report.md").read_text() == "newer"
    assert (elsewhere / "linear_cpc_10pct" / "results.json").exists()
    assert archive.restore(str(tmp_path / "archive"), str(elsewhere)) == []


def test_restore_from_an_archive_not_yet_written(tmp_path):
    assert archive.restore(str(tmp_path / "none"), str(tmp_path / "r")) == []


def _checkpoints(directory, count):
    """`count` real CheckpointManager checkpoints of one variable."""
    step = tf.Variable(0)
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(step=step), str(directory), max_to_keep=5
    )
    for value in range(1, count + 1):
        step.assign(value)
        manager.save()
    return step


def test_unfinished_stages_keep_their_newest_checkpoint_only(tmp_path):
    report_dir = _report_dir(tmp_path / "report")
    stage = report_dir / "supervised_100pct"
    _checkpoints(stage / "checkpoints", 3)
    _checkpoints(stage / "phase1" / "checkpoints", 2)
    _write(stage, "best/weights.index")
    _write(stage, "best/weights.data-00000-of-00001")
    _write(stage, "config.json")
    _write(stage, "logs/events.out")
    _write(stage, "features.npz")
    assert "supervised_100pct/config.json" not in archive.kept_files(
        str(report_dir)
    )
    kept = [
        path
        for path in archive.kept_files(str(report_dir), unfinished=True)
        if path.startswith("supervised_100pct/")
    ]
    assert sorted(kept) == [
        "supervised_100pct/best/weights.data-00000-of-00001",
        "supervised_100pct/best/weights.index",
        "supervised_100pct/checkpoints/checkpoint",
        "supervised_100pct/checkpoints/ckpt-3.data-00000-of-00001",
        "supervised_100pct/checkpoints/ckpt-3.index",
        "supervised_100pct/config.json",
        "supervised_100pct/phase1/checkpoints/checkpoint",
        "supervised_100pct/phase1/checkpoints/ckpt-2.data-00000-of-00001",
        "supervised_100pct/phase1/checkpoints/ckpt-2.index",
    ]


def test_an_archived_checkpoint_resumes_elsewhere_then_is_pruned(tmp_path):
    report_dir = _report_dir(tmp_path / "report")
    stage = report_dir / "supervised_100pct"
    _checkpoints(stage / "checkpoints", 2)
    archive_dir = tmp_path / "archive"
    archive.save(str(report_dir), str(archive_dir), unfinished=True)
    # Elsewhere the newest checkpoint restores (relative paths).
    elsewhere = tmp_path / "elsewhere"
    archive.restore(str(archive_dir), str(elsewhere))
    step = tf.Variable(0)
    latest = tf.train.latest_checkpoint(
        str(elsewhere / "supervised_100pct" / "checkpoints")
    )
    tf.train.Checkpoint(step=step).restore(latest).assert_consumed()
    assert int(step.numpy()) == 2
    # A newer checkpoint supersedes the archived one.
    _checkpoints(stage / "checkpoints", 3)
    archive.save(str(report_dir), str(archive_dir), unfinished=True)
    names = os.listdir(archive_dir / "supervised_100pct" / "checkpoints")
    assert sorted(names) == [
        "checkpoint",
        "ckpt-3.data-00000-of-00001",
        "ckpt-3.index",
    ]
    # Once the stage finishes, its checkpoints leave the archive.
    _write(stage, "results.json")
    archive.save(str(report_dir), str(archive_dir))
    stage_files = [
        os.path.relpath(os.path.join(directory, file), archive_dir)
        for directory, _, files in os.walk(archive_dir / "supervised_100pct")
        for file in files
    ]
    assert stage_files == ["supervised_100pct/results.json"]


def test_id_files_identical_to_pretraining_are_kept_once(tmp_path):
    report_dir = _report_dir(tmp_path / "report")
    _write(report_dir, "pretrain/holdout_50_seed0.txt", "1\n2\n")
    _write(report_dir, "linear_cpc_10pct/holdout_50_seed0.txt", "1\n2\n")
    # Same name, other ids: not a copy, so kept as it is.
    _write(report_dir, "linear_cpc_10pct/validation_9_seed0.txt", "3\n")
    _write(report_dir, "pretrain/validation_9_seed0.txt", "4\n")
    archive_dir = tmp_path / "archive"
    # An earlier archive held the stage's own copy: it is pruned.
    _write(archive_dir, "linear_cpc_10pct/holdout_50_seed0.txt", "1\n2\n")
    saved = archive.save(str(report_dir), str(archive_dir))
    assert "linear_cpc_10pct/holdout_50_seed0.txt" not in saved
    assert "linear_cpc_10pct/validation_9_seed0.txt" in saved
    assert not (archive_dir / "linear_cpc_10pct/holdout_50_seed0.txt").exists()
    elsewhere = tmp_path / "elsewhere"
    restored = archive.restore(str(archive_dir), str(elsewhere))
    assert "linear_cpc_10pct/holdout_50_seed0.txt" in restored
    assert archive.SHARED_FILE not in restored
    assert (
        elsewhere / "linear_cpc_10pct/holdout_50_seed0.txt"
    ).read_text() == "1\n2\n"
    assert (
        elsewhere / "linear_cpc_10pct/validation_9_seed0.txt"
    ).read_text() == "3\n"
    assert archive.restore(str(archive_dir), str(elsewhere)) == []


def test_a_labelled_subset_shared_by_stages_is_kept_once(tmp_path):
    report_dir = _report_dir(tmp_path / "report")
    _write(report_dir, "linear_cpc_10pct/labelled_10pct_seed0.txt", "5\n6\n")
    _write(report_dir, "pixels_10pct/results.json")
    _write(report_dir, "pixels_10pct/labelled_10pct_seed0.txt", "5\n6\n")
    # Unfinished stages keep their own copy.
    _write(report_dir, "finetune_10pct/labelled_10pct_seed0.txt", "5\n6\n")
    archive_dir = tmp_path / "archive"
    saved = archive.save(str(report_dir), str(archive_dir), unfinished=True)
    assert "linear_cpc_10pct/labelled_10pct_seed0.txt" in saved
    assert "pixels_10pct/labelled_10pct_seed0.txt" not in saved
    assert "finetune_10pct/labelled_10pct_seed0.txt" in saved
    assert archive.shared_files(str(report_dir)) == {
        "pixels_10pct/labelled_10pct_seed0.txt": (
            "linear_cpc_10pct/labelled_10pct_seed0.txt"
        )
    }
    elsewhere = tmp_path / "elsewhere"
    archive.restore(str(archive_dir), str(elsewhere))
    assert (
        elsewhere / "pixels_10pct/labelled_10pct_seed0.txt"
    ).read_text() == "5\n6\n"


def test_stages_finished_before_pretraining_keep_their_id_files(tmp_path):
    report_dir = _report_dir(tmp_path / "report")
    (report_dir / "pretrain/summary.json").unlink()
    _write(report_dir, "pretrain/holdout_50_seed0.txt", "1\n2\n")
    _write(report_dir, "supervised_10pct/results.json")
    _write(report_dir, "supervised_10pct/holdout_50_seed0.txt", "1\n2\n")
    archive_dir = tmp_path / "archive"
    saved = archive.save(str(report_dir), str(archive_dir))
    assert "supervised_10pct/holdout_50_seed0.txt" in saved
    assert "pretrain/holdout_50_seed0.txt" not in saved
    elsewhere = tmp_path / "elsewhere"
    archive.restore(str(archive_dir), str(elsewhere))
    assert (
        elsewhere / "supervised_10pct/holdout_50_seed0.txt"
    ).read_text() == "1\n2\n"


def test_a_damaged_record_is_an_unfinished_stage(tmp_path):
    report_dir = _report_dir(tmp_path / "report")
    _write(report_dir, "linear_cpc_10pct/results.json", '{"top1": 0.')
    kept = archive.kept_files(str(report_dir))
    assert "linear_cpc_10pct/results.json" not in kept
    _write(report_dir, "pretrain/summary.json", "[]")
    assert "pretrain/encoder.keras" not in archive.kept_files(str(report_dir))


def test_a_damaged_newest_checkpoint_is_not_archived(tmp_path):
    report_dir = _report_dir(tmp_path / "report")
    stage = report_dir / "supervised_100pct"
    _checkpoints(stage / "checkpoints", 3)
    (data,) = (stage / "checkpoints").glob("ckpt-3.data-*")
    data.write_bytes(b"")
    kept = archive.kept_files(str(report_dir), unfinished=True)
    assert "supervised_100pct/checkpoints/ckpt-2.index" in kept
    assert not any("ckpt-3" in path for path in kept)
