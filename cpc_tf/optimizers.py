"""Optimizers and learning-rate schedules from `config.OptimConfig`."""

import keras


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


def make_optimizer(optim, total_steps):
    """Adam (appendix A) or SGD with the configured schedule.

    No clipping is set on the optimizer: the trainer clips the aggregated
    gradient (see `distribute.aggregate_and_clip`).
    """
    learning_rate = learning_rate_schedule(optim, total_steps)
    weight_decay = optim.weight_decay or None
    if optim.optimizer == "sgd":
        return keras.optimizers.SGD(
            learning_rate, momentum=optim.beta1, weight_decay=weight_decay
        )
    return keras.optimizers.Adam(
        learning_rate,
        beta_1=optim.beta1,
        beta_2=optim.beta2,
        epsilon=optim.epsilon,
        weight_decay=weight_decay,
    )
