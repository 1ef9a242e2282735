"""Model FLOPs of a training step and the matmul peak of this machine."""

import functools
import time

import tensorflow as tf

# Ops whose FLOPs are dense linear algebra: the model FLOPs of MFU.
MATMUL_OPS = (
    "Conv2D",
    "Conv2DBackpropInput",
    "Conv2DBackpropFilter",
    "DepthwiseConv2dNative",
    "MatMul",
    "BatchMatMul",
    "BatchMatMulV2",
    "BatchMatMulV3",
)
# Ops that run a nested function body, invisible to the profiler.
NESTED_OPS = (
    "While",
    "StatelessWhile",
    "If",
    "StatelessIf",
    "Case",
    "StatelessCase",
    "PartitionedCall",
    "StatefulPartitionedCall",
)


def count_flops(fn, *input_specs):
    """FLOPs of one call of `fn`, by op type, from the TF profiler.

    `fn` is traced with `input_specs` (fully defined `tf.TensorSpec`s) and
    the profiler's `float_operation` statistics are read off the graph's
    static shapes; nothing runs. Only ops that `fn`'s outputs depend on
    count: gradient ops nothing consumes (e.g. the input gradient of the
    first convolution) are pruned before running, so they cost nothing.
    Ops without a FLOP statistic (ReLU, exp, casts) count nothing; `fn`
    must not run nested functions (loops, conditionals, XLA clusters),
    whose FLOPs the profiler cannot see: that raises a `ValueError`.

    Returns:
        `{op_type: flops}` for the op types with any FLOPs.
    """
    graph = tf.function(fn).get_concrete_function(*input_specs).graph
    live, stack = set(), [tensor.op for tensor in graph.outputs]
    while stack:
        op = stack.pop()
        if op.name in live:
            continue
        if op.type in NESTED_OPS:
            raise ValueError(
                f"{op.name} ({op.type}) runs a nested function, whose FLOPs "
                "the profiler does not count."
            )
        live.add(op.name)
        stack.extend(tensor.op for tensor in op.inputs)
        stack.extend(op.control_inputs)
    builder = tf.compat.v1.profiler.ProfileOptionBuilder
    options = builder(builder.float_operation()).with_empty_output().build()
    stack = [tf.compat.v1.profiler.profile(graph, cmd="scope", options=options)]
    by_op = {}
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.name in live and node.float_ops:
            op_type = graph.get_operation_by_name(node.name).type
            by_op[op_type] = by_op.get(op_type, 0) + int(node.float_ops)
    return by_op


def training_flops(task, batch_shape):
    """`{op_type: flops}` of the loss and its gradient, as the training step
    computes them, on a float32 batch of `batch_shape`."""
    variables = task.model.trainable_variables

    def forward_backward(patches):
        with tf.GradientTape() as tape:
            loss, _ = task.compute(patches, training=True)
        return loss, tape.gradient(loss, variables)

    return count_flops(forward_backward, tf.TensorSpec(batch_shape))


def matmul_flops(flops_by_op):
    """The model FLOPs (conv and matmul ops) of a `{op_type: flops}`."""
    return sum(v for k, v in flops_by_op.items() if k in MATMUL_OPS)


@functools.cache
def _compiled_matmul(jit, dtype, size):
    """A traced (and, with `jit`, XLA-compiled) `size`-square matmul."""
    matmul = tf.function(tf.linalg.matmul, jit_compile=jit)
    operand = tf.zeros([size, size], dtype)
    matmul(operand, operand).numpy()
    return matmul


def matmul_peak(dtype, size=4096, repeats=4):
    """Best FLOP/s of a `size`-square matmul in `dtype`, with and without
    XLA (oneDNN uses AMX for bfloat16, XLA's CPU dot does not); the
    compilation is done once per process and not timed."""
    seed = tf.constant([1, 2])
    a = tf.cast(tf.random.stateless_normal([size, size], seed), dtype)
    b = tf.cast(tf.random.stateless_normal([size, size], seed + 1), dtype)
    best = float("inf")
    for jit in (False, True):
        matmul = _compiled_matmul(jit, dtype, size)
        for _ in range(repeats):
            start = time.perf_counter()
            matmul(a, b).numpy()
            best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def logits_megabytes(config, batch_size):
    """Float32 InfoNCE logits of one step: `[B*(g-k)*g, B*g*g]` for each
    direction and offset `k`, in MB."""
    model, grid = config.model, config.data.grid_size
    offsets = range(model.steps_to_ignore + 1, model.steps_to_predict + 1)
    cells = sum(
        batch_size * (grid - k) * grid * batch_size * grid * grid
        for k in offsets
    )
    return 4 * cells * len(model.directions) / 2**20
