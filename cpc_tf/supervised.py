"""`python -m cpc_tf.supervised --flagfile=flags/supervised_demo.cfg`:
the supervised baseline (appendix C.1).

The protocol is `cpc_tf.protocols.supervised`; `--helpfull` lists its flags.
"""

from absl import app, flags

from cpc_tf.protocols import registry, runtime

if __name__ == "__main__":
    protocol = registry.get("supervised")
    protocol.define_flags(flags.FLAGS)
    app.run(runtime.entry_point(lambda argv: protocol.main(flags.FLAGS)))
