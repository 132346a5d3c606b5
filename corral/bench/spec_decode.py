"""Speculative decoding counts for bench reports: read from a server's /metrics (the
corral:spec_decode_* counters, or vLLM's vllm:spec_decode_* ones) before and after a run, or from
an in-process engine's scheduler stats, and differenced so that a report covers its run only."""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import Any, Protocol

logger = logging.getLogger(__name__)

# How long a /metrics scrape may take before the report goes without speculation counts.
SCRAPE_TIMEOUT_S = 10.0

_PREFIXES = ("corral:", "vllm:")
_COUNTERS = {
    "spec_decode_num_drafts_total": "num_drafts",
    "spec_decode_num_draft_tokens_total": "num_draft_tokens",
    "spec_decode_num_accepted_tokens_total": "num_accepted_tokens",
}
_PER_POS = "spec_decode_num_accepted_tokens_per_pos_total"
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True, slots=True)
class SpecDecodeCounts:
    """Speculative decoding counters over some span: verification rounds (drafts), draft tokens
    scored, draft tokens accepted, and [j] = rounds whose draft token j was accepted."""

    num_drafts: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    accepted_per_position: tuple[int, ...] = ()

    @classmethod
    def from_stats(cls, stats: Any) -> SpecDecodeCounts:
        """From a corral.spec.stats.SpecDecodeStats (the scheduler's cumulative counters)."""
        return cls(
            stats.num_drafts,
            stats.num_draft_tokens,
            stats.num_accepted_tokens,
            tuple(stats.num_accepted_tokens_per_pos),
        )

    def _combine(self, other: SpecDecodeCounts, sign: int) -> SpecDecodeCounts:
        width = max(len(self.accepted_per_position), len(other.accepted_per_position))
        mine = self.accepted_per_position + (0,) * (width - len(self.accepted_per_position))
        theirs = other.accepted_per_position + (0,) * (width - len(other.accepted_per_position))
        return SpecDecodeCounts(
            self.num_drafts + sign * other.num_drafts,
            self.num_draft_tokens + sign * other.num_draft_tokens,
            self.num_accepted_tokens + sign * other.num_accepted_tokens,
            tuple(a + sign * b for a, b in zip(mine, theirs)),
        )

    def __add__(self, other: SpecDecodeCounts) -> SpecDecodeCounts:
        return self._combine(other, 1)

    def __sub__(self, other: SpecDecodeCounts) -> SpecDecodeCounts:
        """The counts between two cumulative snapshots (self the later one)."""
        return self._combine(other, -1)

    @property
    def acceptance_rate(self) -> float | None:
        """Accepted / scored draft tokens; None when nothing was drafted."""
        if not self.num_draft_tokens:
            return None
        return self.num_accepted_tokens / self.num_draft_tokens

    @property
    def mean_accepted_length(self) -> float | None:
        """Tokens per verification round: accepted drafts plus the target's own token (vLLM's
        mean acceptance length); None without rounds."""
        if not self.num_drafts:
            return None
        return 1 + self.num_accepted_tokens / self.num_drafts

    @property
    def per_position_acceptance(self) -> list[float]:
        """[j]: the fraction of rounds whose draft token j was accepted (as vLLM logs it; rounds
        that drafted fewer than j + 1 tokens count as not accepted there)."""
        if not self.num_drafts:
            return []
        return [count / self.num_drafts for count in self.accepted_per_position]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the counts and the rates derived from them."""
        return {
            "num_drafts": self.num_drafts,
            "num_draft_tokens": self.num_draft_tokens,
            "num_accepted_tokens": self.num_accepted_tokens,
            "num_accepted_tokens_per_pos": list(self.accepted_per_position),
            "acceptance_rate": self.acceptance_rate,
            "mean_accepted_length": self.mean_accepted_length,
            "per_position_acceptance": self.per_position_acceptance,
        }

    def describe(self) -> str:
        """One line: acceptance rate, mean accepted length, per-position acceptance."""
        if self.acceptance_rate is None or self.mean_accepted_length is None:
            return f"no draft tokens ({self.num_drafts} rounds)"
        positions = ", ".join(f"{rate:.2f}" for rate in self.per_position_acceptance)
        return (
            f"acceptance {self.acceptance_rate:.1%} ({self.num_accepted_tokens}/"
            f"{self.num_draft_tokens} draft tokens), mean accepted length "
            f"{self.mean_accepted_length:.2f} over {self.num_drafts} rounds, per position "
            f"[{positions}]"
        )


def parse_spec_counts(text: str) -> SpecDecodeCounts | None:
    """The spec_decode counters of a Prometheus text exposition, summed over label sets other
    than position; None when it has none (speculation off, or not a corral or vLLM server)."""
    totals = dict.fromkeys(_COUNTERS.values(), 0.0)
    per_pos: dict[int, float] = {}
    found = False
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, labels, value = match.groups()
        prefix = next((p for p in _PREFIXES if name.startswith(p)), None)
        if prefix is None:
            continue
        name = name[len(prefix) :]
        if name in _COUNTERS:
            totals[_COUNTERS[name]] += float(value)
            found = True
        elif name == _PER_POS:
            position = dict(_LABEL.findall(labels or "")).get("position")
            if position is not None and position.isdigit():
                per_pos[int(position)] = per_pos.get(int(position), 0.0) + float(value)
                found = True
    if not found:
        return None
    width = max(per_pos, default=-1) + 1
    return SpecDecodeCounts(
        round(totals["num_drafts"]),
        round(totals["num_draft_tokens"]),
        round(totals["num_accepted_tokens"]),
        tuple(round(per_pos.get(position, 0.0)) for position in range(width)),
    )


class MetricsSource(Protocol):
    async def get_text(self, path: str) -> str:
        """GET path and return its body (raises on a non-200 status)."""


async def scrape_spec_counts(transport: MetricsSource) -> SpecDecodeCounts | None:
    """The server's cumulative spec_decode counters from /metrics; None when it exports none or
    /metrics cannot be read (the report then has no speculation lines)."""
    try:
        text = await asyncio.wait_for(transport.get_text("/metrics"), SCRAPE_TIMEOUT_S)
    except asyncio.CancelledError:
        raise
    except Exception as error:
        logger.debug("no speculative decoding counters: /metrics unreadable (%s)", error)
        return None
    return parse_spec_counts(text)
