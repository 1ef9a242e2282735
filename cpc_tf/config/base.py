"""What every configuration group shares: the flag error, the field
helper (a default and its flag's help) and JSON round trips."""

import dataclasses
import json

import tensorflow as tf


class FlagError(ValueError):
    """A flag value that makes no sense; the message names the flag."""


def config_field(default, help_text, **kwargs):
    """A dataclass field whose flag of the same name has `help_text`."""
    return dataclasses.field(
        default=default, metadata={"help": help_text, **kwargs}
    )


def flag_error(flag, message):
    """Raises `FlagError` for `--flag`."""
    raise FlagError(f"--{flag}: {message}")


def check_probability(config, name):
    """Fails `--name` unless `config.name` is in [0, 1]."""
    value = getattr(config, name)
    if not 0.0 <= value <= 1.0:
        flag_error(name, f"a probability must be in [0, 1], got {value}.")


def from_dict(cls, values):
    """Builds dataclass `cls` from a (possibly nested) dict, e.g. JSON."""
    kwargs = {}
    for field in dataclasses.fields(cls):
        if field.name not in values:
            continue
        value = values[field.name]
        if dataclasses.is_dataclass(field.type):
            value = from_dict(field.type, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[field.name] = value
    return cls(**kwargs)


def read_json(cls, path):
    """Builds dataclass `cls` from the JSON file at `path` (any gfile path)."""
    with tf.io.gfile.GFile(path) as f:
        return from_dict(cls, json.load(f))
