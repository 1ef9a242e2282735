"""Optimizers and learning-rate schedules from `config.OptimConfig`."""

import keras

# Keras matches these against variable names: everything but kernels
# (normalization scales and offsets, biases) is excluded from decay.
_NOT_KERNELS = ["^(?!kernel$)"]


def learning_rate_schedule(optim, total_steps):
    """The learning rate: a float (constant) or a Keras schedule.

    `constant` (the paper) or `cosine` decay to 0 at `total_steps`, either
    after a linear warm-up of `warmup_steps` from 0.
    """
    if optim.lr_schedule == "constant" and not optim.warmup_steps:
        return optim.learning_rate
    warmup = min(optim.warmup_steps, max(total_steps - 1, 0))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else optim.learning_rate,
        decay_steps=max(total_steps - warmup, 1),
        alpha=0.0 if optim.lr_schedule == "cosine" else 1.0,
        warmup_target=optim.learning_rate if warmup else None,
        warmup_steps=warmup,
    )


def l2_strength(optim):
    """The L2 penalty strength a task adds to its loss (0 when decay is
    decoupled or off)."""
    return optim.weight_decay if optim.weight_decay_type == "l2" else 0.0


def make_optimizer(optim, total_steps, precision="float32"):
    """Adam (appendix A) or SGD with the configured schedule.

    No clipping is set on the optimizer: the trainer clips the aggregated
    gradient (see `distribute.apply_gradients`). Decoupled weight decay
    (`--weight_decay_type=decoupled`) spares normalization parameters and
    biases; the default L2 penalty is the task's (`l2_strength`). With
    `precision="float16"` the optimizer is wrapped in Keras's
    `LossScaleOptimizer` (dynamic loss scaling).
    """
    learning_rate = learning_rate_schedule(optim, total_steps)
    decoupled = optim.weight_decay_type == "decoupled" and optim.weight_decay
    weight_decay = optim.weight_decay if decoupled else None
    if optim.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(
            learning_rate, momentum=optim.beta1, weight_decay=weight_decay
        )
    else:
        optimizer = keras.optimizers.Adam(
            learning_rate,
            beta_1=optim.beta1,
            beta_2=optim.beta2,
            epsilon=optim.epsilon,
            weight_decay=weight_decay,
        )
    if weight_decay:
        optimizer.exclude_from_weight_decay(var_names=_NOT_KERNELS)
    if precision == "float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer
