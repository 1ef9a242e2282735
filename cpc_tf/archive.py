"""A report's record: the small files that let it resume elsewhere.

A whole CIFAR-10 report is many CPU-hours, more than one machine or one
preemptible VM may hold. `save(report_dir, archive_dir)` copies what a
later `cpc_tf.report` needs to skip the finished stages and to rewrite
the report from them, and nothing bulky:

    archive_dir/
      report.json, report.md, report.png, knn.png, pretrain.cfg
      pretrain/    config.json, summary.json, the hold-out and validation
                   ids, encoder.keras, backbone.keras
      <stage>/     results.json and the stage's other .json/.txt files
                   (its config, the ids of its labelled subset)

Only finished stages are kept (a directory with `results.json`, or
`summary.json` for pretraining); checkpoints, TensorBoard logs, cached
features and trained classifiers stay behind. `restore(archive_dir,
report_dir)` copies back every file `report_dir` lacks, never
overwriting one. Both go through `tf.io.gfile` (a `gs://` archive
works).
"""

import os

import tensorflow as tf

from cpc_tf import artifacts

RESULTS_FILE = "results.json"
REPORT_FILES = ("report.json", "report.md", "report.png", "knn.png")
CONFIG_SUFFIXES = (".cfg",)
STAGE_SUFFIXES = (".json", ".txt")
PRETRAINED_FILES = (artifacts.ENCODER_FILE, artifacts.BACKBONE_FILE)


def _files(directory):
    """Names of the plain files directly in `directory`."""
    return [
        name
        for name in tf.io.gfile.listdir(directory)
        if not tf.io.gfile.isdir(os.path.join(directory, name))
    ]


def _finished(stage_dir):
    return any(
        tf.io.gfile.exists(os.path.join(stage_dir, name))
        for name in (RESULTS_FILE, artifacts.SUMMARY_FILE)
    )


def kept_files(report_dir):
    """Paths, relative to `report_dir`, of the files an archive keeps."""
    kept = [
        name
        for name in _files(report_dir)
        if name in REPORT_FILES or name.endswith(CONFIG_SUFFIXES)
    ]
    for entry in sorted(tf.io.gfile.listdir(report_dir)):
        name = entry.rstrip("/")
        stage_dir = os.path.join(report_dir, name)
        if not tf.io.gfile.isdir(stage_dir) or not _finished(stage_dir):
            continue
        kept.extend(
            os.path.join(name, file)
            for file in _files(stage_dir)
            if file.endswith(STAGE_SUFFIXES) or file in PRETRAINED_FILES
        )
    return sorted(kept)


def _copy(relative, source_dir, target_dir):
    target = os.path.join(target_dir, relative)
    tf.io.gfile.makedirs(os.path.dirname(target))
    tf.io.gfile.copy(os.path.join(source_dir, relative), target, overwrite=True)


def save(report_dir, archive_dir):
    """Copies `kept_files(report_dir)` into `archive_dir` (overwriting).

    Returns the relative paths copied.
    """
    kept = kept_files(report_dir)
    for relative in kept:
        _copy(relative, report_dir, archive_dir)
    return kept


def restore(archive_dir, report_dir):
    """Copies the archive's files that `report_dir` lacks into it.

    Returns the relative paths copied; an archive that does not exist
    yet restores nothing.
    """
    if not tf.io.gfile.isdir(archive_dir):
        return []
    copied = []
    for directory, _, files in tf.io.gfile.walk(archive_dir):
        for file in files:
            path = os.path.join(directory, file)
            relative = path[len(archive_dir) :].lstrip("/")
            if not tf.io.gfile.exists(os.path.join(report_dir, relative)):
                _copy(relative, archive_dir, report_dir)
                copied.append(relative)
    return sorted(copied)
