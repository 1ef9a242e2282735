"""The protocols by name: what `python -m cpc_tf.<name>` and the report's
stages run.

A protocol is four functions of its module, named here so that the
import arrows show who runs what:

- `define_flags(flag_values)`: defines its flags (with its defaults) on
  an absl `FlagValues`;
- `run_from_flags(flag_values, verbose)`: parses them into its config and
  runs; returns its summary or results dict (None if it has nothing to
  report);
- `describe(result, flag_values)`: the last line its entry point prints
  (None: print nothing); the evaluations share `evaluation.describe`'s
  (the headline numbers and where they are).

`get(name)` gives one; `NAMES` lists them. The entry point of a protocol
is `python -m cpc_tf.<name>`.
"""

import dataclasses
from collections.abc import Callable

from cpc_tf import evaluation
from cpc_tf.config import FlagError
from cpc_tf.protocols import finetune, linear, pretrain, supervised


@dataclasses.dataclass(frozen=True)
class Protocol:
    """One protocol's entry points (see the module docstring)."""

    name: str
    define_flags: Callable
    run_from_flags: Callable
    describe: Callable

    @property
    def entry_point(self):
        return entry_point(self.name)

    def main(self, flag_values):
        """Runs on parsed flags and prints the protocol's last line."""
        line = self.describe(self.run_from_flags(flag_values), flag_values)
        if line is not None:
            print(line)


def entry_point(name):
    """The module `python -m` runs for protocol `name`."""
    return f"cpc_tf.{name}"


def _results_line(results, flag_values):
    return evaluation.describe(results, flag_values.model_dir)


def _protocol(name, module, describe=_results_line):
    return Protocol(name, module.define_flags, module.run_from_flags, describe)


_PROTOCOLS = {
    "pretrain": _protocol("pretrain", pretrain, pretrain.describe),
    "linear_eval": _protocol("linear_eval", linear),
    "finetune": _protocol("finetune", finetune),
    "supervised": _protocol("supervised", supervised),
}
NAMES = tuple(_PROTOCOLS)


def get(name):
    """The `Protocol` called `name` (raises `FlagError` naming the known
    ones)."""
    if name not in _PROTOCOLS:
        raise FlagError(f"unknown protocol {name!r}; expected one of {NAMES}.")
    return _PROTOCOLS[name]
