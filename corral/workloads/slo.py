"""Service-level objectives per request: TTFT, TPOT and end-to-end latency bounds."""

from __future__ import annotations

from dataclasses import dataclass

_KEYS = ("ttft_ms", "tpot_ms", "e2e_ms")


@dataclass(frozen=True, slots=True)
class SLO:
    """Upper bounds in milliseconds; None leaves a metric unconstrained. A request meets the SLO
    when it meets every bound (TPOT is not defined, hence met, for one-token outputs)."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None

    def __post_init__(self) -> None:
        for key in _KEYS:
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise ValueError(f"SLO {key} must be > 0 ms, got {value}")

    @property
    def is_empty(self) -> bool:
        return all(getattr(self, key) is None for key in _KEYS)

    def is_met(self, ttft_s: float, tpot_s: float | None, e2e_s: float) -> bool:
        if self.ttft_ms is not None and ttft_s * 1e3 > self.ttft_ms:
            return False
        if self.tpot_ms is not None and tpot_s is not None and tpot_s * 1e3 > self.tpot_ms:
            return False
        return not (self.e2e_ms is not None and e2e_s * 1e3 > self.e2e_ms)

    def describe(self) -> str:
        bounds = [(key, getattr(self, key)) for key in _KEYS]
        parts = [f"{key}<={value:g}" for key, value in bounds if value is not None]
        return ",".join(parts) or "none"


def parse_slo(text: str | None) -> SLO:
    """Parse 'ttft_ms=200,tpot_ms=50,e2e_ms=10000' (any subset); '' or None gives no SLO."""
    if not text:
        return SLO()
    values: dict[str, float] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in _KEYS:
            known = ", ".join(key + "=MS" for key in _KEYS)
            raise ValueError(f"SLO item {part!r} is not one of {known}")
        try:
            values[key] = float(value)
        except ValueError:
            raise ValueError(f"SLO {key} value {value!r} is not a number") from None
    return SLO(**values)
