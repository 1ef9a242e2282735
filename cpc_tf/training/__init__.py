"""Training: the one trainer every protocol shares (`trainer`), its
replicated step (`steps`), tasks (`tasks`), the paper's step under Keras
`fit` (`keras_fit`), distribution (`distribute`), evaluation hooks
(`hooks`), SIGTERM (`preemption`), checkpoints that survive damage
(`checkpoints`), optimizers, what a run builds from its config
(`builders`) and the host's description (`machine`).

Importing this package imports nothing: `preemption` must stay cheap for
entry points, which watch SIGTERM before TensorFlow is imported."""
