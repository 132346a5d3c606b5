"""parse_memory_budget: a KV memory budget given as a fraction of free memory or a size."""

from __future__ import annotations

import re

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1e3,
    "kb": 1e3,
    "m": 1e6,
    "mb": 1e6,
    "g": 1e9,
    "gb": 1e9,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
    "t": 1e12,
    "tb": 1e12,
}


def parse_memory_budget(value: str | float | int) -> float:
    """Parse a KV memory budget: a fraction in (0, 1] of free memory, or a byte count.

    Accepts numbers and strings such as "0.3", "512MiB", "2GB", "1e9". Returns the fraction
    as a float <= 1, or the byte count as a float > 1.
    """
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        match = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([a-zA-Z]*)\s*", str(value))
        if not match or match.group(2).lower() not in _SIZE_UNITS:
            raise ValueError(
                f"kv cache memory {value!r} is neither a fraction in (0, 1] nor a size like 2GiB"
            )
        try:
            number = float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
        except ValueError:
            raise ValueError(f"kv cache memory {value!r} is not a number") from None
    if number <= 0:
        raise ValueError(f"kv cache memory must be positive, got {value!r}")
    return number
