"""Plug-in specs with options: "name" or "name:key=value,key=value" (e.g. "sjf:max_wait_s=30").

One string configures a plug-in from a CLI flag or a config field without a flag per knob.
"""

from __future__ import annotations

import inspect
from typing import Any, TypeVar

from corral.registry import Registry

T = TypeVar("T")


def parse_value(text: str) -> Any:
    """An option value: int, float, bool (true/false), none, or the string itself."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip()


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Split "name:key=value,..." into the name and its keyword options."""
    name, _, rest = spec.partition(":")
    name = name.strip()
    options: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"option {item!r} in {spec!r} is not key=value")
        options[key.strip()] = parse_value(value)
    return name, options


def build_from_spec(registry: Registry[T], spec: str) -> T:
    """Instantiate the plug-in a spec names, passing its options to the constructor.

    Raises ValueError for an unknown name or option, naming the accepted ones."""
    name, options = parse_spec(spec)
    cls = registry.get(name)
    accepted = [
        param
        for param in inspect.signature(cls.__init__).parameters
        if param not in ("self", "args", "kwargs")
    ]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"{registry.kind} {name!r} has no option {', '.join(unknown)}; "
            f"options: {', '.join(accepted) or 'none'}"
        )
    return cls(**options)
