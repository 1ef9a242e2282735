"""`python -m cpc_tf.pretrain --flagfile=flags/demo.cfg`:
CPC v2 pretraining (appendix A).

The protocol is `cpc_tf.protocols.pretrain`; `--helpfull` lists its flags.
"""

from absl import app, flags

from cpc_tf.protocols import registry, runtime

if __name__ == "__main__":
    protocol = registry.get("pretrain")
    protocol.define_flags(flags.FLAGS)
    app.run(runtime.entry_point(lambda argv: protocol.main(flags.FLAGS)))
