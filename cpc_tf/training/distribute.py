"""`tf.distribute` strategies and the one gradient all-reduce per step.

Keras 3 clips each replica's gradient before its optimizer sums them across
replicas, so `global_clipnorm` bounds the wrong quantity. `apply_gradients`
does what the paper needs with a single all-reduce per step: it sums every
gradient over the replicas once (with a few scalars packed into the same
collective: the loss, the metrics and the preemption flag), clips the
global norm of each optimizer group's summed gradient, and hands the
result to each group's optimizer with the optimizer's own all-reduce
switched off (`skip_gradient_aggregation`).

`gather_batch` concatenates every replica's predictions and targets for
`--negatives=global` with static shapes only (a one-hot replica mask, no
shape that depends on the replica id), so it compiles with XLA and on TPU.
"""

import functools
import json
import os

import keras
import tensorflow as tf

from cpc_tf.config import FlagError


def make_strategy(name, tpu="", devices=None):
    """`default` | `mirrored` | `multi_worker` (TF_CONFIG) | `tpu`.

    `mirrored` uses TF's default cross-device ops: NCCL all-reduce on GPUs,
    in-process collectives on CPUs. One `MirroredStrategy` per device set
    is kept for the process: in TF 2.21 the collectives of a second
    in-process instance collide with the first's (the step aborts with
    "Shape mismatch in the collective instance"), which only a process
    that builds several runs (tests, notebooks) meets.
    `tpu` takes a TPU name or address, or `local` on a TPU VM.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return _mirrored(None if devices is None else tuple(devices))
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise FlagError(
        f"--strategy: expected default, mirrored, multi_worker or tpu, got "
        f"{name!r}."
    )


@functools.cache
def _mirrored(devices):
    return tf.distribute.MirroredStrategy(
        None if devices is None else list(devices)
    )


def check_batch_size(strategy, global_batch_size):
    """Fails, naming --batch_size, when replicas cannot share the batch."""
    replicas = strategy.num_replicas_in_sync
    if global_batch_size % replicas:
        raise FlagError(
            f"--batch_size: {global_batch_size} is not divisible by the "
            f"{replicas} replicas in sync."
        )
    return global_batch_size // replicas


def cluster_task(strategy=None):
    """`(task_type, task_id, is_chief, num_workers)` of this process.

    One chief per cluster, whatever TF_CONFIG names: the `chief` task when
    the cluster has one (its `worker` 0 is then an ordinary worker), else
    `worker` 0. A process outside a cluster is its own chief.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is not None and resolver.task_type:
        jobs = resolver.cluster_spec().as_dict()
        task_type, task_id = resolver.task_type, int(resolver.task_id or 0)
    else:
        tf_config = json.loads(os.environ.get("TF_CONFIG") or "{}")
        task = tf_config.get("task", {})
        jobs = tf_config.get("cluster", {})
        task_type, task_id = task.get("type"), int(task.get("index", 0))
    if not task_type:
        return None, 0, True, 1
    chief_job = "chief" if "chief" in jobs else "worker"
    is_chief = task_type == chief_job and task_id == 0
    num_workers = sum(len(jobs.get(job, ())) for job in ("chief", "worker"))
    return task_type, task_id, is_chief, max(num_workers, 1)


def broadcast_from_chief(strategy, value, is_chief):
    """The chief's integer `value` on every worker (one all-reduce).

    Each of the chief's replicas contributes `(value, 1)`, every other
    replica `(0, 0)`; the sums divide back to the chief's value. Every
    worker must call it (a collective).
    """
    contribution = tf.constant(
        [value, 1] if is_chief else [0, 0], dtype=tf.int64
    )
    summed = strategy.reduce(
        tf.distribute.ReduceOp.SUM,
        strategy.run(lambda: tf.identity(contribution)),
        axis=None,
    )
    total, chief_replicas = (int(v) for v in summed.numpy())
    return total // chief_replicas


def skip_gradient_aggregation(optimizer):
    """Makes a Keras optimizer apply the gradients it is given as they are.

    Keras 3's TensorFlow optimizer all-reduces the gradients itself when
    `apply` runs in replica context (`TFOptimizer._all_reduce_sum_gradients`,
    a no-op in cross-replica context). `apply_gradients` has already summed
    them, so this replaces that method on `optimizer` (and on the inner
    optimizer of a `LossScaleOptimizer`) with the identity. Idempotent.
    """
    for target in (optimizer, getattr(optimizer, "inner_optimizer", None)):
        if target is None or getattr(target, "_cpc_skips_aggregation", False):
            continue
        if not hasattr(target, "_all_reduce_sum_gradients"):
            raise TypeError(
                f"{type(target).__name__} has no _all_reduce_sum_gradients: "
                "this Keras version aggregates gradients differently; "
                "cpc_tf.training.distribute.apply_gradients needs updating."
            )
        target._all_reduce_sum_gradients = _identity
        target._cpc_skips_aggregation = True
    return optimizer


def _identity(grads_and_vars):
    return list(grads_and_vars)


def apply_gradients(
    groups, grads, clip_norm, extras=(), loss_scale=None, pack_bytes=0
):
    """One all-reduce of `grads` (and `extras`), per-group clip, apply.

    Call in replica context, each replica with the gradient of its share of
    the loss (the loss divided by the replicas, or the global loss for
    `--negatives=global`), and `extras` (float32 scalars) to sum in the same
    collective.

    Args:
        groups: `(optimizer, variables)` pairs on disjoint variables; each
            optimizer must have gone through `skip_gradient_aggregation`.
        grads: one gradient per variable of the groups, in group order
            (None allowed).
        clip_norm: clip each group's summed gradient to this global norm
            (0: no clipping).
        extras: float32 scalars summed over replicas with the gradients.
        loss_scale: the dynamic loss scale the gradients carry (float16
            training with `LossScaleOptimizer`s), or None.
        pack_bytes: split the all-reduce into packs of about this many
            bytes (`CommunicationOptions(bytes_per_pack=...)`), so that the
            first packs travel while the rest is summed; 0 = one pack.
            TPUs ignore it.

    Returns:
        `(norms, extras, finite)`: each group's global gradient norm before
        clipping (unscaled), the summed extras, and whether every gradient
        was finite (False: the optimizers skipped the step).
    """
    variables = [v for _, group_vars in groups for v in group_vars]
    grads = [
        tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables)
    ]
    # `identity`: a value captured from outside the replica function (the
    # stop flag) must become this replica's own tensor to be reduced.
    extras = [tf.identity(tf.cast(e, tf.float32)) for e in extras]
    context = tf.distribute.get_replica_context()
    if context.num_replicas_in_sync > 1:
        options = tf.distribute.experimental.CommunicationOptions(
            bytes_per_pack=int(pack_bytes)
        )
        summed = context.all_reduce(
            tf.distribute.ReduceOp.SUM, grads + extras, options=options
        )
    else:
        summed = grads + extras
    grads, extras = summed[: len(grads)], summed[len(grads) :]
    if loss_scale is not None:
        grads = [g / tf.cast(loss_scale, g.dtype) for g in grads]
    norms, start = [], 0
    clipped_groups = []
    for _, group_vars in groups:
        group_grads = grads[start : start + len(group_vars)]
        start += len(group_vars)
        norm = tf.linalg.global_norm(group_grads)
        if clip_norm:
            group_grads, _ = tf.clip_by_global_norm(
                group_grads, clip_norm, use_norm=norm
            )
        norms.append(norm)
        clipped_groups.append(group_grads)
    finite = tf.reduce_all(tf.math.is_finite(tf.stack(norms)))
    for (optimizer, group_vars), group_grads in zip(groups, clipped_groups):
        if loss_scale is not None:
            # Every group skips together: one non-finite group poisons all.
            poison = tf.where(finite, 0.0, float("nan"))
            group_grads = [
                (g + tf.cast(poison, g.dtype)) * tf.cast(loss_scale, g.dtype)
                for g in group_grads
            ]
        optimizer.apply(group_grads, group_vars)
    return norms, extras, finite


def gather_batch(values):
    """Concatenates every replica's `[B, ...]` tensors along the batch axis.

    Args:
        values: a list of `[B, ...]` tensors (one collective for all).

    Returns:
        The list of `[R * B, ...]` tensors. This replica's slot holds its
        `values` (differentiable); the other replicas' slots are constants.
        A loss of the gathered tensors is the global loss, and its gradient
        on this replica is this replica's part of the global gradient:
        summing the replicas' gradients gives the gradient of the global
        loss, with no collective in the backward pass.

    Shapes are static: each replica puts its values into its row of an
    `[R, B, ...]` tensor with a one-hot mask of its replica id (a tensor on
    TPU), the rows are summed over replicas, and the local rows are put
    back with the same mask.
    """
    context = tf.distribute.get_replica_context()
    replicas = context.num_replicas_in_sync
    if replicas == 1:
        return list(values)
    replica = tf.convert_to_tensor(context.replica_id_in_sync_group)
    slots = [place_in_slot(v, replica, replicas) for v in values]
    gathered = context.all_reduce(tf.distribute.ReduceOp.SUM, slots)
    return [
        merge_slot(g, v, replica, replicas) for g, v in zip(gathered, values)
    ]


def _slot_mask(replica, replicas, rank, dtype):
    mask = tf.one_hot(replica, replicas, dtype=dtype)
    return tf.reshape(mask, [replicas] + [1] * rank)


def place_in_slot(values, replica, replicas):
    """`[B, ...]` -> `[R, B, ...]`, zero but for row `replica` (a tensor)."""
    mask = _slot_mask(replica, replicas, len(values.shape), values.dtype)
    return mask * tf.stop_gradient(values)[None]


def merge_slot(gathered, values, replica, replicas):
    """Summed `[R, B, ...]` slots -> `[R * B, ...]` whose row `replica` is
    `values` itself (differentiable) and the rest constants."""
    mask = _slot_mask(replica, replicas, len(values.shape), values.dtype)
    local = mask * (values - tf.stop_gradient(values))[None]
    merged = tf.stop_gradient(gathered) + local
    shape = tf.concat([[-1], tf.shape(values)[1:]], axis=0)
    return tf.reshape(merged, shape)


def loss_scale_of(optimizer):
    """The current dynamic loss scale of a `LossScaleOptimizer`, else None."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer.dynamic_scale
    return None
