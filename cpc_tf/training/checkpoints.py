"""Resuming from the newest checkpoint that restores, never from nothing.

A checkpoint directory of `tf.train.CheckpointManager` holds `ckpt-<step>`
(an `.index` and `.data-*` files per step) and the `checkpoint` state file
naming them. A full disk, a killed node or a non-atomic object store can
leave the newest checkpoint truncated, without its index or its data, or
the state file garbled; TensorFlow then raises on restore, or (no state
file, no index) reports no checkpoint and a run would silently start over
and overwrite the good ones. `resume` instead:

1. takes as candidates every step that the state file names *or* that has
   an `.index` or `.data-*` file in the directory (a garbled or stale state
   file loses nothing), newest first;
2. restores each fully (index and data, every object of the model matched)
   until one succeeds, logging one warning per failure with the file and
   the reason;
3. moves every file of a newer step (the damaged checkpoints, an
   interrupted save's `_temp` directory) into `damaged/<n>/`, where no
   later save can overwrite it, and rewrites the state file to what was
   restored;
4. fails with `CheckpointError` (a `FlagError` naming `--model_dir`, so an
   entry point prints one line and exits 1) when candidates exist but
   none restores, having changed nothing. `restart=True` (`--restart`)
   moves every checkpoint into `replaced/<n>/` and starts from step 0 on
   purpose.

Saves stay TF's: data and index are written under `ckpt-<step>_temp/` and
renamed into place, and the state file is updated after that, so a save
killed half way leaves no `ckpt-<step>.index` (the next run resumes from
the one before), and the manager prunes old checkpoints only after the
new one is complete. On multi-worker runs the chief chooses and moves
files; the other workers restore the step it chose (`agree`).
"""

import os
import re

import tensorflow as tf
from absl import logging

from cpc_tf.config import FlagError

STATE_FILE = "checkpoint"
PREFIX = "ckpt"
DAMAGED_DIR = "damaged"
REPLACED_DIR = "replaced"
_STEP_FILE = re.compile(rf"^{PREFIX}-(\d+)(?:\.index|\.data-.*|_temp)$")


class CheckpointError(FlagError):
    """Checkpoints exist but none restores; nothing was changed."""


def _entries(directory):
    if not tf.io.gfile.isdir(directory):
        return []
    return [name.rstrip("/") for name in tf.io.gfile.listdir(directory)]


def _steps_in_state_file(directory):
    """Steps the state file names (none when it is missing or garbled)."""
    try:
        state = tf.train.get_checkpoint_state(directory)
    except (tf.errors.OpError, ValueError) as error:
        logging.warning("%s: unreadable (%s)", STATE_FILE, error)
        return set()
    if state is None:
        return set()
    paths = [state.model_checkpoint_path, *state.all_model_checkpoint_paths]
    steps = set()
    for path in paths:
        match = re.search(rf"{PREFIX}-(\d+)$", path)
        if match:
            steps.add(int(match.group(1)))
    return steps


def step_files(directory):
    """`{step: [file names]}` of the `ckpt-<step>` entries in `directory`
    (index, data shards, an interrupted save's `_temp` directory)."""
    files = {}
    for name in _entries(directory):
        match = _STEP_FILE.match(name)
        if match:
            files.setdefault(int(match.group(1)), []).append(name)
    return files


def candidates(directory):
    """Steps that may hold a checkpoint, newest first: those the state
    file names and those with an `.index` or `.data-*` file."""
    steps = _steps_in_state_file(directory)
    for step, names in step_files(directory).items():
        if any(not name.endswith("_temp") for name in names):
            steps.add(step)
    return sorted(steps, reverse=True)


def path_of(directory, step):
    return os.path.join(directory, f"{PREFIX}-{step}")


def _reason(error):
    lines = str(error).strip().splitlines() or [""]
    return f"{type(error).__name__}: {lines[0][:300]}"


def _attempt(path, read):
    """None when `read()` reads checkpoint `path` whole, or why not."""
    if not tf.io.gfile.exists(path + ".index"):
        return "no .index file"
    try:
        read()
    except Exception as error:  # noqa: BLE001 (any failure: next one)
        return _reason(error)
    return None


def try_restore(checkpoint, path, written=False):
    """Restores `path` into `checkpoint` (`written`: a checkpoint of
    `Checkpoint.write`, read without its save counter); None, or why it
    failed."""
    load = checkpoint.read if written else checkpoint.restore
    return _attempt(path, lambda: load(path).assert_existing_objects_matched())


def _read_every_tensor(path):
    # Not `tf.train.load_checkpoint`: on `ram://` a prefix passes for a
    # directory.
    reader = tf.compat.v1.train.NewCheckpointReader(path)
    for name in reader.get_variable_to_shape_map():
        reader.get_tensor(name)


def verify(path):
    """Reads every tensor of checkpoint `path`; None, or why it failed
    (for checkpoints with no model to restore into, e.g. archiving)."""
    return _attempt(path, lambda: _read_every_tensor(path))


def newest_readable(directory):
    """The newest `ckpt-<step>` path of `directory` whose every tensor
    reads back, or None."""
    for step in candidates(directory):
        if verify(path_of(directory, step)) is None:
            return path_of(directory, step)
    return None


def _free_subdirectory(parent):
    index = 1
    while tf.io.gfile.exists(os.path.join(parent, str(index))):
        index += 1
    return os.path.join(parent, str(index))


def move_aside(directory, steps, kind=DAMAGED_DIR):
    """Moves every file of `steps` (and their `_temp` directories) into
    `directory/<kind>/<n>/` (a new n each time); returns their new
    paths."""
    files = step_files(directory)
    names = sorted(name for step in steps for name in files.get(step, ()))
    if not names:
        return []
    target = _free_subdirectory(os.path.join(directory, kind))
    moved = []
    for name in names:
        destination = os.path.join(target, name)
        _move(os.path.join(directory, name), destination)
        moved.append(destination)
    return moved


def _move(source, destination):
    """Renames a file, or a directory file by file (object stores and
    `ram://` rename no directory with its contents)."""
    if not tf.io.gfile.isdir(source):
        tf.io.gfile.makedirs(os.path.dirname(destination))
        tf.io.gfile.rename(source, destination)
        return
    for name in tf.io.gfile.listdir(source):
        name = name.rstrip("/")
        _move(os.path.join(source, name), os.path.join(destination, name))
    tf.io.gfile.rmtree(source)  # empty now


def write_state(directory, step):
    """Rewrites the state file: `ckpt-<step>` latest, and every older step
    that has an index, with the index's time (the manager prunes only the
    checkpoints listed with a time after `last_preserved_timestamp`)."""
    kept = sorted(
        s
        for s, names in step_files(directory).items()
        if s <= step and f"{PREFIX}-{s}.index" in names
    )
    times = [
        tf.io.gfile.stat(path_of(directory, s) + ".index").mtime_nsec / 1e9
        for s in kept
    ]
    tf.compat.v1.train.update_checkpoint_state(
        directory,
        f"{PREFIX}-{step}",
        all_model_checkpoint_paths=[f"{PREFIX}-{s}" for s in kept],
        all_model_checkpoint_timestamps=times,
        last_preserved_timestamp=min(times, default=0.0) - 1.0,
    )


def _single_process(value):
    return value


def resume(
    checkpoint,
    directory,
    is_chief=True,
    restart=False,
    agree=_single_process,
    flag="model_dir",
):
    """Restores the newest checkpoint of `directory` that restores.

    Args:
        checkpoint: the `tf.train.Checkpoint` to restore into.
        directory: the checkpoint directory (`model_dir/checkpoints`).
        is_chief: whether this process may move files and rewrite the
            state file.
        restart: start from nothing on purpose; the existing checkpoints
            are moved into `replaced/<n>/` (by the chief).
        agree: `step -> step`, the chief's choice on every worker
            (multi-worker: a broadcast; -1 means none restored).
        flag: the flag named by the error.

    Returns:
        `{"restored": path or None, "damaged": [{"checkpoint", "reason",
        "moved_to"}], "replaced": [paths]}`.

    Raises:
        CheckpointError: checkpoints exist but none restores.
    """
    record = dict(restored=None, damaged=[], replaced=[])
    if restart:
        if is_chief:
            record["replaced"] = move_aside(
                directory, list(step_files(directory)), REPLACED_DIR
            )
            if tf.io.gfile.exists(os.path.join(directory, STATE_FILE)):
                tf.io.gfile.remove(os.path.join(directory, STATE_FILE))
        agree(0)
        return record
    chosen, failures = 0, []
    if is_chief:
        steps = candidates(directory)
        chosen = -1 if steps else 0
        for step in steps:
            path = path_of(directory, step)
            reason = try_restore(checkpoint, path)
            if reason is None:
                chosen = step
                break
            logging.warning("Checkpoint %s does not restore: %s", path, reason)
            failures.append((step, reason))
    chosen = agree(chosen)
    if chosen < 0:
        tried = "; ".join(
            f"{PREFIX}-{step}: {reason}" for step, reason in failures
        )
        raise CheckpointError(
            f"--{flag}: {directory} holds checkpoints but none restores "
            f"({tried or 'see the chief'}). Nothing was changed; pass "
            "--restart=true to start over (they are moved aside)."
        )
    path = path_of(directory, chosen)
    if chosen and not is_chief:
        reason = try_restore(checkpoint, path)
        if reason is not None:
            raise CheckpointError(
                f"--{flag}: {path}, chosen by the chief, does not restore "
                f"here: {reason}"
            )
    if chosen:
        record["restored"] = path
    if is_chief:
        record["damaged"] = _set_aside_newer(directory, chosen, failures)
        if chosen and (
            record["damaged"] or chosen not in _steps_in_state_file(directory)
        ):
            write_state(directory, chosen)
    return record


def _set_aside_newer(directory, chosen, failures):
    """Moves the files of every step after `chosen` (damaged checkpoints,
    interrupted saves) aside; returns what was moved, per step, and why."""
    reasons = dict(failures)
    newer = sorted(s for s in step_files(directory) if s > chosen)
    moved = move_aside(directory, newer)
    damaged = []
    for step in sorted(set(newer) | set(reasons), reverse=True):
        prefix = f"{PREFIX}-{step}"
        damaged.append(
            dict(
                checkpoint=prefix,
                reason=reasons.get(step, "an interrupted save (no .index)"),
                moved_to=[
                    m
                    for m in moved
                    if re.match(rf"{prefix}[._]", os.path.basename(m))
                ],
            )
        )
    if moved:
        logging.warning(
            "Resuming from step %d; newer checkpoint files were moved to %s.",
            chosen,
            os.path.dirname(moved[0]),
        )
    return damaged
