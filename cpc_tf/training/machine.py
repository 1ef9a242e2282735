"""What machine a number was measured on.

`lscpu`'s model name alone ("AMD EPYC") does not tell a Zen 4 from a
Zen 5, whose speeds differ by up to 2x here, so `cpu_model()` adds the
CPU family and model numbers, the way BENCHMARKS.md names machines.
"""

import os
import platform

CPUINFO = "/proc/cpuinfo"


def _cpuinfo():
    """The first processor's `/proc/cpuinfo` fields (empty elsewhere)."""
    fields = {}
    if not os.path.exists(CPUINFO):
        return fields
    with open(CPUINFO) as f:
        for line in f:
            if not line.strip():
                break
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    return fields


def cpu_model(cpuinfo=None):
    """E.g. `AMD EPYC (family 25 model 17)`, or the platform's name."""
    fields = _cpuinfo() if cpuinfo is None else cpuinfo
    name = fields.get("model name") or platform.processor() or "unknown CPU"
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']} model {fields['model']})"
    return name


def has_amx(cpuinfo=None):
    """Whether the CPU has AMX bfloat16 matmul units."""
    fields = _cpuinfo() if cpuinfo is None else cpuinfo
    return "amx_bf16" in fields.get("flags", "").split()
