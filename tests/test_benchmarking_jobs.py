"""One benchmark subprocess's job: config parsing, precisions, sources."""

import pytest
from helpers import ROOT

from cpc_tf.benchmarking import jobs
from cpc_tf.config import FlagError


def test_missing_source_reads_the_stand_in():
    config = jobs.parse_config(
        [
            f"--flagfile={ROOT}/flags/demo.cfg",
            "--train_data=tfrecord:/nonexistent/train-*.tfrecord",
        ]
    )
    config = jobs.with_available_source(config, "mnist5k:train")
    assert config.data.train_data == "mnist5k:train"


def test_precision_names():
    assert jobs.split_precision("float32") == ("float32", False)
    assert jobs.split_precision("mixed_bfloat16_jit") == (
        "mixed_bfloat16",
        True,
    )
    with pytest.raises(FlagError, match="--precisions"):
        jobs.split_precision("float16")
