"""A report's archive: what it keeps, and a restore that never overwrites."""

from cpc_tf import archive


def _write(root, relative, text="x"):
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
