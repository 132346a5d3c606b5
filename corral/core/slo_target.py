"""SLO: per-request latency bounds (TTFT, TPOT, end-to-end), in seconds.

One type for every user: the scheduler's per-class attainment (SLOTracker), the benchmark's and
the simulator's goodput, the capacity search. On the command line the bounds are written in
milliseconds, `parse_slo("ttft_ms=200,tpot_ms=50,e2e_ms=10000")`, and describe() writes them back
in that syntax.
"""

from __future__ import annotations

from dataclasses import dataclass

_FIELDS = ("ttft_s", "tpot_s", "e2e_s")
# Command-line key of each field, in milliseconds.
_KEYS_MS = {"ttft_ms": "ttft_s", "tpot_ms": "tpot_s", "e2e_ms": "e2e_s"}


@dataclass(frozen=True, slots=True)
class SLO:
    """Upper bounds in seconds; None leaves a metric unconstrained. A request meets the SLO when
    it meets every bound (TPOT is not defined, hence met, for one-token outputs)."""

    ttft_s: float | None = None
    tpot_s: float | None = None
    e2e_s: float | None = None

    def __post_init__(self) -> None:
        for name in _FIELDS:
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"SLO target {name} must be > 0 s, got {value}")

    @property
    def is_empty(self) -> bool:
        return all(getattr(self, name) is None for name in _FIELDS)

    def is_met(self, ttft_s: float, tpot_s: float | None, e2e_s: float) -> bool:
        """Whether a request with these latencies meets every bound (tpot_s None: met)."""
        if self.ttft_s is not None and ttft_s > self.ttft_s:
            return False
        if self.tpot_s is not None and tpot_s is not None and tpot_s > self.tpot_s:
            return False
        return not (self.e2e_s is not None and e2e_s > self.e2e_s)

    def deadline_s(self, num_output_tokens: int) -> float | None:
        """The end-to-end deadline that the TTFT and TPOT bounds imply for a request of
        num_output_tokens (an edf deadline); None without both bounds."""
        if self.ttft_s is None or self.tpot_s is None:
            return None
        return self.ttft_s + self.tpot_s * max(num_output_tokens - 1, 0)

    def describe(self) -> str:
        """The bounds in parse_slo's syntax ('ttft_ms<=200,tpot_ms<=50'), or 'none'."""
        parts = [
            f"{key}<={value * 1e3:g}"
            for key, name in _KEYS_MS.items()
            if (value := getattr(self, name)) is not None
        ]
        return ",".join(parts) or "none"


def parse_slo(text: str | None) -> SLO:
    """Parse 'ttft_ms=200,tpot_ms=50,e2e_ms=10000' (milliseconds, any subset); '' or None gives
    no SLO. ValueError names the offending item."""
    if not text:
        return SLO()
    values_s: dict[str, float] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in _KEYS_MS:
            known = ", ".join(key + "=MS" for key in _KEYS_MS)
            raise ValueError(f"SLO item {part!r} is not one of {known}")
        try:
            value_ms = float(value)
        except ValueError:
            raise ValueError(f"SLO {key} value {value!r} is not a number") from None
        if not value_ms > 0:
            raise ValueError(f"SLO {key} must be > 0 ms, got {value_ms}")
        values_s[_KEYS_MS[key]] = value_ms / 1e3
    return SLO(**values_s)


def parse_slo_classes(default: str | None, classes: tuple[str, ...]) -> tuple[SLO, dict[int, SLO]]:
    """The scheduler's SLO targets: a default for every class (parse_slo syntax) and per-class
    ones, each "PRIORITY:ttft_ms=..,tpot_ms=..,e2e_ms=.." (the class is Request.priority).
    ValueError names the offending item."""
    targets: dict[int, SLO] = {}
    for item in classes:
        label, sep, text = item.partition(":")
        try:
            priority = int(label)
        except ValueError:
            priority = None
        if not sep or priority is None:
            raise ValueError(
                f"SLO class {item!r} is not PRIORITY:ttft_ms=..,tpot_ms=..,e2e_ms=.. "
                "(PRIORITY an integer, the request's priority)"
            )
        if priority in targets:
            raise ValueError(f"SLO class {priority} is given twice")
        targets[priority] = parse_slo(text)
    return parse_slo(default), targets
