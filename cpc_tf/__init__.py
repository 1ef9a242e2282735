"""cpc_tf: CPC v2 (Henaff et al., 2020) in Keras 3 / TensorFlow.

The library's packages, bottom to top (each imports only those below it,
`tests/test_layout.py` checks): `config` (dataclasses, flags), `models`
(the Keras model core) and `data` (the input pipeline), `rundir` (the
files of a run), `training` (the shared trainer), `serving` and
`evaluation`, `protocols` (pretrain, linear, finetune, supervised),
`reporting` and `benchmarking`; the modules beside them are the entry
points (`python -m cpc_tf.<name>`).
"""

import sys

__version__ = "0.1.0"

if sys.argv and sys.argv[0] == "-m":
    # `python -m cpc_tf.<entry point>` is starting: watch SIGTERM from now
    # on, before TensorFlow is imported (see `cpc_tf.training.preemption`).
    from cpc_tf.training import preemption

    preemption.install()


def __getattr__(name):
    # Lazy, so that `import cpc_tf` does not import TensorFlow.
    if name == "load_encoder":
        from cpc_tf.rundir.transfer import load_encoder

        return load_encoder
    raise AttributeError(f"module 'cpc_tf' has no attribute {name!r}")
