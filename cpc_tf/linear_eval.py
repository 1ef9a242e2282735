"""`python -m cpc_tf.linear_eval --flagfile=flags/linear_demo.cfg`:
the linear probe of a pretrained encoder
(appendix B).

The protocol is `cpc_tf.protocols.linear`; `--helpfull` lists its flags.
"""

from absl import app, flags

from cpc_tf.protocols import registry, runtime

if __name__ == "__main__":
    protocol = registry.get("linear_eval")
    protocol.define_flags(flags.FLAGS)
    app.run(runtime.entry_point(lambda argv: protocol.main(flags.FLAGS)))
