"""`python -m cpc_tf.pretrain` with TFDS datasets replaced by mock data.

`tfds.testing.mock_data` generates random examples of any TFDS dataset's
feature spec (ImageNet included) without its files, so a flagfile that reads
`tfds:imagenet2012:train` runs end to end offline. Takes pretrain's flags.
"""

import tensorflow_datasets as tfds
from absl import app

from cpc_tf import pretrain

if __name__ == "__main__":
    pretrain.define_flags()
    with tfds.testing.mock_data(num_examples=8):
        app.run(pretrain.main)
