"""cpc_tf: CPC v2 (Henaff et al., 2020) in Keras 3 / TensorFlow."""

__version__ = "0.1.0"
