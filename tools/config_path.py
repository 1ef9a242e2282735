"""Follows a pretraining config through the code: which files read it.

    python tools/config_path.py [--flagfile=flags/demo.cfg ...]

Runs `cpc_tf.protocols.pretrain.run` for one tiny step (the demo flagfile
with a narrow encoder, unless flags are given) and records every call of
a `cpc_tf` function that receives the config or one of its groups
(`DataConfig`, `ModelConfig`, ...) as an argument. Consecutive calls in
one file are one visit; it prints the files in visit order and, per file,
how often the path returned to it after leaving it (a measure of how
often a reader following `config` must jump back).
"""

import collections
import dataclasses
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "cpc_tf") + os.sep
TINY = [
    "--encoder_blocks=1",
    "--encoder_widths=4",
    "--encoder_output_widths=8",
    "--stem_width=4",
    "--context_hidden=8",
    "--context_blocks=1",
    "--target_dim=8",
    "--batch_size=4",
    "--steps=1",
    "--knn_every=0",
]


def config_parts(config):
    """The ids of `config` and of its nested dataclass groups."""
    parts = {id(config)}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            parts |= config_parts(value)
    return parts


def trace(config, run):
    """`[(file, function)]` of the calls that received a part of
    `config`, in call order."""
    parts = config_parts(config)
    calls = []

    def profile(frame, event, arg):
        del arg
        if event != "call" or not frame.f_code.co_filename.startswith(PACKAGE):
            return
        code = frame.f_code
        names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
        if any(id(frame.f_locals.get(name)) in parts for name in names):
            calls.append((code.co_filename[len(PACKAGE) :], code.co_name))

    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
    return calls


def returns(calls):
    """`(visits, {file: times the path came back to it})`."""
    visits = [calls[0][0]] if calls else []
    for file, _ in calls[1:]:
        if file != visits[-1]:
            visits.append(file)
    counts = collections.Counter(visits)
    return visits, {f: n - 1 for f, n in counts.items() if n > 1}


def main(args):
    from cpc_tf.config import flags as cpc_flags
    from cpc_tf.protocols import pretrain

    with tempfile.TemporaryDirectory() as model_dir:
        args = args or [f"--flagfile={ROOT}/flags/demo.cfg", *TINY]
        config = cpc_flags.parse_pretrain_args(
            [*args, f"--model_dir={model_dir}"]
        )
        calls = trace(config, lambda: pretrain.run(config, verbose=False))
    visits, back = returns(calls)
    print(f"{len(calls)} calls, {len(set(visits))} files, {len(visits)} visits")
    print(" -> ".join(visits))
    for file, count in sorted(back.items(), key=lambda item: -item[1]):
        print(f"  back to {file}: {count}")
    print(f"most returns to one file: {max(back.values(), default=0)}")


if __name__ == "__main__":
    main(sys.argv[1:])
