"""absl flags defined one-to-one from the config dataclasses.

Only entry points import this module. Each dataclass field becomes a flag
of the same name, with its help text prefixed by the config group, so
`--helpfull` reads like a manual and a flagfile is a list of fields.
"""

import dataclasses

from absl import app, flags

FLAGS = flags.FLAGS


def _group(cls):
    return cls.__name__.replace("Config", "").lower()


def define_config_flags(*config_classes, flag_values=FLAGS):
    """Defines one flag per field of each dataclass in `config_classes`."""
    for cls in config_classes:
        for field in dataclasses.fields(cls):
            if field.name in flag_values:
                continue
            help_text = f"[{_group(cls)}] {field.metadata.get('help', '')}"
            default = field.default
            if isinstance(default, bool):
                flags.DEFINE_bool(
                    field.name, default, help_text, flag_values=flag_values
                )
            elif isinstance(default, int):
                flags.DEFINE_integer(
                    field.name, default, help_text, flag_values=flag_values
                )
            elif isinstance(default, float):
                flags.DEFINE_float(
                    field.name, default, help_text, flag_values=flag_values
                )
            elif isinstance(default, tuple):
                flags.DEFINE_list(
                    field.name,
                    [str(v) for v in default],
                    help_text,
                    flag_values=flag_values,
                )
            else:
                flags.DEFINE_string(
                    field.name, default, help_text, flag_values=flag_values
                )


def _convert(field, value):
    if isinstance(field.default, tuple):
        kind = type(field.default[0]) if field.default else str
        return tuple(kind(v) for v in value)
    return value


def config_from_flags(cls, flag_values=FLAGS):
    """Builds `cls` (nested dataclasses allowed) from parsed flags.

    A `ValueError` from validation becomes an `app.UsageError`, so a bad
    flag ends the program with its message before any compute.
    """
    kwargs = {}
    for field in dataclasses.fields(cls):
        if dataclasses.is_dataclass(field.type):
            kwargs[field.name] = config_from_flags(field.type, flag_values)
        else:
            kwargs[field.name] = _convert(field, flag_values[field.name].value)
    try:
        return cls(**kwargs)
    except ValueError as error:
        raise app.UsageError(str(error)) from error
