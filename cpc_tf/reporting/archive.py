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
      shared_files.json  stage files kept once: {stage file: kept copy}

Every evaluation stage writes its own copy of the hold-out and validation
ids, byte for byte those of pretraining, and every method of one seed and
label fraction the same labelled subset; the archive keeps each such file
once (pretraining's copy, or the first finished stage's), and
`shared_files.json` says where each stage's copy came from, so a restore
gives every stage its files back.

Of finished stages (a directory with `results.json`, or `summary.json`
for pretraining) checkpoints, TensorBoard logs, cached features and
trained classifiers stay behind. Unfinished stages are skipped unless
`unfinished=True`: then their resumable state goes too (the newest
checkpoint of every `checkpoints/`, the best evaluation's `best/`
weights, `.json`/`.txt`/`.keras` files; no logs), so a stage longer than
one machine's lease continues elsewhere from its last checkpoint. Once a
stage finishes, the next `save` prunes that state from the archive.
`restore(archive_dir, report_dir)` copies back every file `report_dir`
lacks (the shared copies included), never overwriting one. Both go
through `tf.io.gfile` (a `gs://` archive works).
"""

import os

import tensorflow as tf

from cpc_tf.rundir import artifacts
from cpc_tf.training import checkpoints

REPORT_FILES = ("report.json", "report.md", "report.png", "knn.png")
CONFIG_SUFFIXES = (".cfg",)
STAGE_SUFFIXES = (".json", ".txt")
PRETRAINED_FILES = (artifacts.ENCODER_FILE, artifacts.BACKBONE_FILE)
UNFINISHED_SUFFIXES = (".json", ".txt", ".keras")
BEST_DIR = "best"
PRETRAIN_DIR = "pretrain"
SHARED_FILE = "shared_files.json"


def _files(directory):
    """Names of the plain files directly in `directory`."""
    return [
        name
        for name in tf.io.gfile.listdir(directory)
        if not tf.io.gfile.isdir(os.path.join(directory, name))
    ]


def _finished(stage_dir):
    """A finished stage's record reads back whole (a damaged one is an
    unfinished stage: it is re-run, never archived as finished)."""
    return artifacts.finished(stage_dir)


def _latest_checkpoint_files(directory):
    """The state file and the newest readable checkpoint's files of
    `directory` (`checkpoints.newest_readable`: a damaged newer one is
    not archived over the good one)."""
    latest = checkpoints.newest_readable(directory)
    if latest is None:
        return []
    prefix = os.path.basename(latest) + "."
    return [
        name
        for name in _files(directory)
        if name == "checkpoint" or name.startswith(prefix)
    ]


def _resumable_files(stage_dir, relative=""):
    """Paths, relative to `stage_dir`, of an unfinished stage's state."""
    kept = []
    here = os.path.join(stage_dir, relative)
    for entry in sorted(tf.io.gfile.listdir(here)):
        name = entry.rstrip("/")
        path = os.path.join(relative, name)
        if not tf.io.gfile.isdir(os.path.join(here, name)):
            in_best = BEST_DIR in relative.split(os.sep)
            if in_best or name.endswith(UNFINISHED_SUFFIXES):
                kept.append(path)
        elif name == artifacts.CHECKPOINT_DIR:
            kept.extend(
                os.path.join(path, file)
                for file in _latest_checkpoint_files(
                    os.path.join(stage_dir, path)
                )
            )
        elif name != artifacts.LOG_DIR:
            kept.extend(_resumable_files(stage_dir, path))
    return kept


def _stage_dirs(report_dir):
    for entry in sorted(tf.io.gfile.listdir(report_dir)):
        name = entry.rstrip("/")
        if tf.io.gfile.isdir(os.path.join(report_dir, name)):
            yield name


def _read_bytes(path):
    with tf.io.gfile.GFile(path, "rb") as file:
        return file.read()


def shared_files(report_dir):
    """`{stage file: kept file}`, relative to `report_dir`: the finished
    stages' id files identical to another kept copy, which an archive
    keeps once. The kept copy is finished pretraining's when it has one
    of that name and content, else the first finished stage's (in name
    order): an unfinished stage's files may not be archived."""
    names = sorted(_stage_dirs(report_dir), key=lambda n: n != PRETRAIN_DIR)
    kept, shared = {}, {}
    for name in names:
        stage_dir = os.path.join(report_dir, name)
        if not _finished(stage_dir):
            continue
        for file in sorted(_files(stage_dir)):
            if not file.endswith(".txt"):
                continue
            key = file, _read_bytes(os.path.join(stage_dir, file))
            relative = os.path.join(name, file)
            if key in kept:
                shared[relative] = kept[key]
            else:
                kept[key] = relative
    return shared


def kept_files(report_dir, unfinished=False, shared=None):
    """Paths, relative to `report_dir`, of the files an archive keeps.

    With `unfinished`, unfinished stages' resumable state too; never the
    `shared` files (default `shared_files(report_dir)`), whose kept copy
    stands for them.
    """
    kept = [
        name
        for name in _files(report_dir)
        if name in REPORT_FILES or name.endswith(CONFIG_SUFFIXES)
    ]
    if shared is None:
        shared = shared_files(report_dir)
    for name in _stage_dirs(report_dir):
        stage_dir = os.path.join(report_dir, name)
        if not _finished(stage_dir):
            if unfinished:
                kept.extend(
                    os.path.join(name, path)
                    for path in _resumable_files(stage_dir)
                )
            continue
        kept.extend(
            os.path.join(name, file)
            for file in _files(stage_dir)
            if (file.endswith(STAGE_SUFFIXES) or file in PRETRAINED_FILES)
            and os.path.join(name, file) not in shared
        )
    return sorted(kept)


def _copy(relative, source_dir, target_dir):
    target = os.path.join(target_dir, relative)
    tf.io.gfile.makedirs(os.path.dirname(target))
    tf.io.gfile.copy(os.path.join(source_dir, relative), target, overwrite=True)


def _walk_files(root):
    """Paths, relative to `root`, of every file below it."""
    found = []
    for directory, _, files in tf.io.gfile.walk(root):
        for file in files:
            path = os.path.join(directory, file)
            found.append(path[len(root) :].lstrip("/"))
    return found


def _prune(archive_dir, kept):
    """Deletes an archive's files of stages that have since finished (and
    checkpoints since superseded), which `kept` no longer lists."""
    kept = set(kept)
    stages = {path.split("/")[0] for path in kept if "/" in path}
    for name in stages & set(_stage_dirs(archive_dir)):
        for path in _walk_files(os.path.join(archive_dir, name)):
            relative = os.path.join(name, path)
            if relative not in kept:
                tf.io.gfile.remove(os.path.join(archive_dir, relative))


def save(report_dir, archive_dir, unfinished=False):
    """Copies `kept_files(report_dir, unfinished)` into `archive_dir`
    (overwriting), records the `shared_files` in `shared_files.json` and
    prunes what the archive no longer needs.

    Returns the relative paths copied.
    """
    shared = shared_files(report_dir)
    kept = kept_files(report_dir, unfinished, shared)
    for relative in kept:
        _copy(relative, report_dir, archive_dir)
    tf.io.gfile.makedirs(archive_dir)
    artifacts.write_json(os.path.join(archive_dir, SHARED_FILE), shared)
    _prune(archive_dir, kept)
    return kept


def restore(archive_dir, report_dir):
    """Copies the archive's files that `report_dir` lacks into it, and
    each stage's shared copy from the file kept for it.

    Returns the relative paths copied (`shared_files.json` itself stays
    in the archive); an archive that does not exist yet restores
    nothing.
    """
    if not tf.io.gfile.isdir(archive_dir):
        return []
    copied = []
    for relative in _walk_files(archive_dir):
        if relative == SHARED_FILE:
            continue
        if not tf.io.gfile.exists(os.path.join(report_dir, relative)):
            _copy(relative, archive_dir, report_dir)
            copied.append(relative)
    manifest = os.path.join(archive_dir, SHARED_FILE)
    shared = (
        artifacts.read_json(manifest) if tf.io.gfile.exists(manifest) else {}
    )
    for target, source in sorted(shared.items()):
        path = os.path.join(report_dir, target)
        if not tf.io.gfile.exists(path):
            tf.io.gfile.makedirs(os.path.dirname(path))
            tf.io.gfile.copy(os.path.join(archive_dir, source), path)
            copied.append(target)
    return sorted(copied)
