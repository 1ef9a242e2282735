"""What every protocol of the registry does alike: its flags, a bad flag
failing before any compute, `--restart`, and its entry point."""

import importlib.util

import pytest
from absl import flags

from cpc_tf.config import FlagError
from cpc_tf.protocols import registry


@pytest.fixture(params=registry.NAMES)
def protocol(request):
    return registry.get(request.param)


def parsed(protocol, *args):
    values = flags.FlagValues()
    protocol.define_flags(values)
    values([protocol.entry_point, *args])
    return values


def test_each_protocol_has_the_run_flags_and_an_entry_point(protocol):
    values = parsed(protocol)
    for name in ("model_dir", "batch_size", "restart", "seed"):
        assert name in values, f"{protocol.name}: no --{name}"
    assert values.restart is False
    assert importlib.util.find_spec(protocol.entry_point) is not None


def test_a_bad_flag_fails_before_compute_naming_it(protocol, tmp_path):
    values = parsed(protocol, "--batch_size=0", f"--model_dir={tmp_path}")
    with pytest.raises(FlagError, match="--batch_size"):
        protocol.run_from_flags(values, verbose=False)
    assert not any(tmp_path.iterdir())


def test_an_evaluation_that_returned_nothing_prints_nothing():
    for name in ("linear_eval", "finetune", "supervised"):
        protocol = registry.get(name)
        assert protocol.describe(None, parsed(protocol)) is None


def test_an_unknown_protocol_names_the_known_ones():
    with pytest.raises(FlagError, match="pretrain"):
        registry.get("pretrian")
