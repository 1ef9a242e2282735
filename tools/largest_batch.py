"""Prints the largest power-of-two batch of one device that the start-up
memory estimate says fits (`tools/accelerator_check.sh` starts there).

    python tools/largest_batch.py --flagfile=flags/v2.cfg --remat=blocks
"""

import sys

import tensorflow as tf

from cpc_tf.config import flags as cpc_flags
from cpc_tf.training import memory


def main(args):
    config = cpc_flags.parse_pretrain_args(args, program="largest_batch")
    capacity, device = memory.device_memory(
        tf.distribute.get_strategy(), config.memory.device_memory_gb
    )
    if capacity is None:
        raise SystemExit(f"error: {device}; pass --device_memory_gb.")
    batch = memory.largest_batch(config, capacity)
    print(batch)
    print(f"{device}: {capacity / memory.GB:.1f} GB", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
