"""`python -m cpc_tf.finetune --flagfile=flags/finetune_demo.cfg`:
fine-tuning a pretrained encoder with few
labels (appendix C.2).

The protocol is `cpc_tf.protocols.finetune`; `--helpfull` lists its flags.
"""

from absl import app, flags

from cpc_tf.protocols import registry, runtime

if __name__ == "__main__":
    protocol = registry.get("finetune")
    protocol.define_flags(flags.FLAGS)
    app.run(runtime.entry_point(lambda argv: protocol.main(flags.FLAGS)))
