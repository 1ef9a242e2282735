"""Rematerialisation of a ResNet-v2 backbone, block by block.

`rematerialized(backbone, mode)` returns a function with the backbone's
forward pass, `[N, h, w, C]` -> `[N, h', w', D]`, that keeps fewer
activations for the backward pass:

- "none": the backbone as it is (every activation kept).
- "blocks": only each bottleneck block's input is kept; a block's inner
  activations are recomputed in the backward pass (one more forward pass
  of the blocks).
- "stages": only each stack's input is kept; in the backward pass a stack
  is recomputed keeping its block inputs, then each block as in "blocks"
  (two more forward passes, the least memory).

The blocks are functional subgraphs of the backbone, not layers, so
`keras.RematScope` cannot reach them. Here each block is a
`keras.Model` cut out of the backbone's own graph between its input and
its `..._add` output: it calls the backbone's layers, so every variable
(and its path in a checkpoint or a `.keras` file) stays as it is, and
`keras.remat` wraps it (`tf.recompute_grad` on TensorFlow,
`jax.checkpoint` on JAX). The stem and the final normalization are not
recomputed.
"""

import weakref

import keras

from cpc_tf.config.memory import REMAT_MODES

# backbone -> (head, stacks, tail): made once per backbone, not tracked by
# any layer (the cut-out models share the backbone's layers and weights).
_SEGMENTS = weakref.WeakKeyDictionary()


def check_mode(mode):
    """Raises ValueError unless `mode` is one of `REMAT_MODES`."""
    if mode not in REMAT_MODES:
        raise ValueError(
            f"Unknown remat mode {mode!r}; expected one of {REMAT_MODES}."
        )


def _block_name(layer_name):
    """ "stack2_block3" for "stack2_block3_add"."""
    return layer_name[: -len("_add")]


def segments(backbone):
    """`(head, stacks, tail)` cut out of a `resnet_v2` backbone.

    `head` maps the images to the first block's input (stem, pool),
    `stacks` is a list (one per stack) of lists of block models, each from
    its block's input to its `<stack>_<block>_add` output, and `tail` maps
    the last block's output to the backbone's output (the final
    normalization). All share the backbone's layers.

    Raises:
        ValueError: when the backbone has no `stack*_block*_add` layers.
    """
    if backbone in _SEGMENTS:
        return _SEGMENTS[backbone]
    adds = [
        layer
        for layer in backbone.layers
        if layer.name.startswith("stack") and layer.name.endswith("_add")
    ]
    if not adds:
        raise ValueError(
            f"Cannot rematerialise {backbone.name!r}: it has no "
            "'stack<i>_block<j>_add' layers (a cpc_tf resnet_v2 has)."
        )
    first = next(
        layer
        for layer in backbone.layers
        if layer.name.startswith(_block_name(adds[0].name) + "_")
    )
    head = keras.Model(backbone.input, first.input, name="remat_head")
    stacks, boundary, current = [], first.input, None
    for add in adds:
        stack = add.name.split("_")[0]
        if stack != current:
            stacks.append([])
            current = stack
        stacks[-1].append(
            keras.Model(boundary, add.output, name=_block_name(add.name))
        )
        boundary = add.output
    tail = keras.Model(boundary, backbone.output, name="remat_tail")
    _SEGMENTS[backbone] = head, stacks, tail
    return head, stacks, tail


def _run_blocks(blocks):
    rematted = [keras.remat(block) for block in blocks]

    def run(x):
        for block in rematted:
            x = block(x)
        return x

    return run


def rematerialized(backbone, mode):
    """The backbone's forward pass under `mode` (see the module).

    Args:
        backbone: a `resnet_v2` model (for "none", any model).
        mode: "none", "blocks" or "stages".

    Returns:
        A function `[N, h, w, C]` -> the backbone's output, with equal
        values and gradients in every mode.
    """
    check_mode(mode)
    if mode == "none":
        return backbone
    head, stacks, tail = segments(backbone)
    if mode == "blocks":
        runs = [_run_blocks(blocks) for blocks in stacks]
    else:
        runs = [keras.remat(_run_blocks(blocks)) for blocks in stacks]

    def forward(images):
        x = head(images)
        for run in runs:
            x = run(x)
        return tail(x)

    return forward


def _side(size, stride):
    return -(-size // stride)


def _block_elements(spec, norm, side):
    """Per block of `spec`: `(output elements, all layer output
    elements)` for one `side x side` input, and the output side."""
    relu_layers = 1 if norm in ("layer",) else 2
    blocks, channels = [], spec.stem_width
    for count, width, out, stride in zip(
        spec.blocks, spec.widths, spec.output_widths, spec.strides
    ):
        stack = []
        for index in range(count):
            block_stride = stride if index == 0 else 1
            area_in = side * side
            side = _side(side, block_stride)
            area = side * side
            inner = relu_layers * channels * area_in
            if channels != out or block_stride != 1:
                inner += out * area
            inner += (1 + relu_layers) * width * area_in
            inner += (1 + relu_layers) * width * area + 2 * out * area
            stack.append((out * area, inner))
            channels = out
        blocks.append(stack)
    return blocks, side, channels


def kept_elements(spec, patch_size, mode="none", norm="layer", channels=3):
    """Activation elements kept for the backward pass, per patch.

    Counts every layer's output of `resnet_v2(spec, norm)` on a
    `patch_size` square (the input included): all of them for "none"; for
    "blocks" the stem's, every block's output and the largest block's
    inner outputs (recomputed one block at a time); for "stages" the
    stem's, every stack's output and the largest stack's block outputs
    plus its largest block. The start-up memory check multiplies this by
    bytes per element measured on a real step.
    """
    check_mode(mode)
    relu_layers = 1 if norm == "layer" else 2
    side = _side(patch_size, spec.stem_stride)
    head = patch_size * patch_size * channels
    head += spec.stem_width * side * side
    if spec.stem_pool:
        side = _side(side, 2)
        head += spec.stem_width * side * side
    blocks, side, out = _block_elements(spec, norm, side)
    tail = relu_layers * out * side * side
    every = [block for stack in blocks for block in stack]
    if mode == "none":
        return head + tail + sum(inner for _, inner in every)
    if mode == "blocks":
        outputs = sum(output for output, _ in every)
        return head + tail + outputs + max(inner for _, inner in every)
    stack_outputs = sum(stack[-1][0] for stack in blocks)
    largest_stack = max(
        sum(output for output, _ in stack) + max(inner for _, inner in stack)
        for stack in blocks
    )
    return head + tail + stack_outputs + largest_stack
