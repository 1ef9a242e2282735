"""`tf.distribute` strategies and the gradient aggregation the paper needs.

Keras 3 clips each replica's gradient before its optimizer sums them across
replicas, so `global_clipnorm` bounds the wrong quantity. `aggregate_and_clip`
sums the replicas' gradients first, clips the global norm of that sum, and
returns each replica's `1 / num_replicas` share of the result: the sum the
Keras optimizer then takes is exactly the clipped aggregate.
"""

import tensorflow as tf


def make_strategy(name, tpu="", devices=None):
    """`default` | `mirrored` | `multi_worker` (TF_CONFIG) | `tpu`.

    MirroredStrategy reduces through one device instead of its default
    in-process collectives: in TF 2.21 a step that all-reduces more than
    once (the trainer's clip-after-sum, then Keras's optimizer) feeds the
    collectives' instance keys in an order that differs between replicas,
    and the step aborts with a shape mismatch. Multi-worker and TPU
    strategies (one device per process) are not affected and are the
    faster choice for many accelerators.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(
            devices, cross_device_ops=tf.distribute.ReductionToOneDevice()
        )
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(
        f"--strategy: expected default, mirrored, multi_worker or tpu, got "
        f"{name!r}."
    )


def check_batch_size(strategy, global_batch_size):
    """Fails, naming --batch_size, when replicas cannot share the batch."""
    replicas = strategy.num_replicas_in_sync
    if global_batch_size % replicas:
        raise ValueError(
            f"--batch_size: {global_batch_size} is not divisible by the "
            f"{replicas} replicas in sync."
        )
    return global_batch_size // replicas


def aggregate_and_clip(grads, clip_norm):
    """All-reduces replica gradients, clips their global norm.

    Call in replica context with each replica's gradient of its share of
    the loss (the loss divided by the number of replicas).

    Returns:
        `(shares, norm)`: per-variable gradients to hand to a Keras optimizer
        (which sums them across replicas) and the global norm of the
        aggregated gradient before clipping.
    """
    context = tf.distribute.get_replica_context()
    replicas = context.num_replicas_in_sync
    total = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
    norm = tf.linalg.global_norm(total)
    if clip_norm:
        total, _ = tf.clip_by_global_norm(total, clip_norm, use_norm=norm)
    return [g / replicas for g in total], norm


def gather_batch(values):
    """Concatenates every replica's `[B, ...]` values along the batch axis.

    This replica's slot holds `values` itself (differentiable); the other
    replicas' slots are constants. A loss computed on the gathered batch is
    then the global loss, and its gradient on this replica is exactly this
    replica's part of the global gradient: summing the replicas' gradients
    gives the gradient of the global loss, with no collective inside the
    backward pass.

    The gather is a sum of zero-padded slots (an all-reduce) so that one
    step uses a single kind of collective (`all_gather` goes through
    `merge_call` in TF 2.21, `all_reduce` may not).
    """
    context = tf.distribute.get_replica_context()
    replicas = context.num_replicas_in_sync
    replica = context.replica_id_in_sync_group
    count = tf.shape(values)[0]
    rank = len(values.shape)
    padding = [[replica * count, (replicas - 1 - replica) * count]]
    slot = tf.pad(tf.stop_gradient(values), padding + [[0, 0]] * (rank - 1))
    gathered = context.all_reduce(tf.distribute.ReduceOp.SUM, slot)
    before = gathered[: replica * count]
    after = gathered[(replica + 1) * count :]
    return tf.concat([before, values, after], axis=0)
