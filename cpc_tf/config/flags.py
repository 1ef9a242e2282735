"""absl flags defined one-to-one from the config dataclasses.

Entry points, and tools that parse a config's command line
(`parse_pretrain_args`), import this module. Each dataclass field becomes
a flag of the same name, with its help text prefixed by the config group, so
`--helpfull` reads like a manual and a flagfile is a list of fields.
"""

import dataclasses

from absl import flags

from cpc_tf.config import (
    DataConfig,
    FlagError,
    KnnConfig,
    MemoryConfig,
    ModelConfig,
    OptimConfig,
    PretrainConfig,
    RunConfig,
)

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

    Validation raises `config.FlagError` naming the flag; entry points
    (`runtime.entry_point`) end the program with its one-line message
    before any compute.
    """
    kwargs = {}
    for field in dataclasses.fields(cls):
        if dataclasses.is_dataclass(field.type):
            kwargs[field.name] = config_from_flags(field.type, flag_values)
        else:
            kwargs[field.name] = _convert(field, flag_values[field.name].value)
    return cls(**kwargs)


def define_pretrain_flags(flag_values=FLAGS):
    """Defines the flags of `cpc_tf.pretrain` (every `PretrainConfig` group)."""
    define_config_flags(
        DataConfig,
        ModelConfig,
        OptimConfig,
        RunConfig,
        KnnConfig,
        MemoryConfig,
        flag_values=flag_values,
    )


def parse_pretrain_args(args, program="cpc_tf"):
    """A `PretrainConfig` from command-line style `args` (flagfiles
    included), parsed on flags of its own, not the global `FLAGS`."""
    values = flags.FlagValues()
    define_pretrain_flags(values)
    values([program, *args])
    return config_from_flags(PretrainConfig, values)


def define_protocol_flags(flag_values, defaults, *config_classes):
    """Defines an evaluation entry point's flags with its `defaults`."""
    define_config_flags(*config_classes, flag_values=flag_values)
    for name, value in defaults.items():
        flag_values.set_default(name, value)


def whole_image_config(flag_values, program, config_class):
    """`config_class` of parsed flags for a whole-image protocol.

    Such a protocol reads `--image_size` only: `--crop_size`,
    `--patch_size` and `--patch_stride` take the image side (one patch, so
    `DataConfig` validates), and giving one of them is an error.
    """
    for name in ("crop_size", "patch_size", "patch_stride"):
        if flag_values[name].present:
            raise FlagError(
                f"--{name}: {program} trains on whole images of "
                "--image_size; the patch geometry does not apply."
            )
        flag_values[name].value = flag_values.image_size
    return config_from_flags(config_class, flag_values)


def geometry_given(flag_values):
    """The patch-geometry flags given on the command line."""
    names = ("image_size", "crop_size", "patch_size", "patch_stride")
    return [name for name in names if flag_values[name].present]
