"""What the system says about this machine's CPU, read in one place (TensorFlow-free: the compiled-step
cache needs it before TensorFlow loads).

Linux lists each processor in /proc/cpuinfo as a block of `name : value` lines; the first block is taken
for the machine (every core of a machine has the same model and features). Elsewhere the file is absent
and every field is empty.
"""

from __future__ import annotations

from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


def first_cpu_fields(cpuinfo: Path = CPUINFO) -> dict[str, str]:
    """The first processor's fields by name; empty when the file cannot be read."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    first = text.split("\n\n")[0]
    return {name.strip(): value.strip() for name, _, value in (line.partition(":") for line in first.splitlines())}


def feature_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The CPU's feature flags (x86 names them `flags`, ARM `Features`)."""
    fields = first_cpu_fields(cpuinfo)
    return frozenset((fields.get("flags") or fields.get("Features") or "").split())
