"""cpc_tf: CPC v2 (Henaff et al., 2020) in Keras 3 / TensorFlow."""

import sys

__version__ = "0.1.0"

if sys.argv and sys.argv[0] == "-m":
    # `python -m cpc_tf.<entry point>` is starting: watch SIGTERM from now
    # on, before TensorFlow is imported (see `cpc_tf.preemption`).
    from cpc_tf import preemption

    preemption.install()


def __getattr__(name):
    # Lazy, so that `import cpc_tf.losses` does not import TensorFlow.
    if name == "load_encoder":
        from cpc_tf.transfer import load_encoder

        return load_encoder
    raise AttributeError(f"module 'cpc_tf' has no attribute {name!r}")
