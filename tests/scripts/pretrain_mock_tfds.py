"""`python -m cpc_tf.pretrain` with TFDS datasets replaced by mock data.

`tfds.testing.mock_data` generates random examples of any TFDS dataset's
feature spec (ImageNet included) without its files, so a flagfile that reads
`tfds:imagenet2012:train` runs end to end offline. Takes pretrain's flags.
"""

import tensorflow_datasets as tfds
from absl import app, flags

from cpc_tf.protocols import registry, runtime

if __name__ == "__main__":
    protocol = registry.get("pretrain")
    protocol.define_flags(flags.FLAGS)
    with tfds.testing.mock_data(num_examples=8):
        app.run(runtime.entry_point(lambda argv: protocol.main(flags.FLAGS)))
