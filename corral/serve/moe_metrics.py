"""Mixture-of-experts series on /metrics: tokens routed to each expert of each MoE layer, fed
the engine's cumulative counts (SchedulerStats.expert_tokens)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class MoEMetrics:
    """corral:moe_expert_tokens_total{model_name, layer, expert}: a skewed load shows as a few
    experts taking most tokens (a hot expert bounds the step on expert parallelism)."""

    def __init__(self, registry: CollectorRegistry, values: dict[str, str]) -> None:
        self.tokens = Counter(
            "corral:moe_expert_tokens",
            "Tokens routed to the expert (each token counts once per expert it uses; "
            "recomputed tokens count again).",
            [*values, "layer", "expert"],
            registry=registry,
        )
        self._values = values
        self._last: dict[tuple[int, int], int] = {}

    def observe(self, expert_tokens: dict[int, list[int]]) -> None:
        """Add what each counter gained since the last snapshot."""
        for layer, counts in expert_tokens.items():
            for expert, count in enumerate(counts):
                before = self._last.get((layer, expert), 0)
                if count > before:
                    labels = {**self._values, "layer": str(layer), "expert": str(expert)}
                    self.tokens.labels(**labels).inc(count - before)
                self._last[(layer, expert)] = count
