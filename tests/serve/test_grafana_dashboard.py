"""examples/grafana/corral-dashboard.json cannot rot: every series a panel queries is one that
`corral serve` or `corral router` exports (names taken from the metric objects' own registries,
with the suffixes prometheus_client gives counters and histograms in exposition), and the JSON
is a well-formed Grafana dashboard (unique ids, grid positions, the datasource variable)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from corral.cluster.migration import MigrationMetrics
from corral.cluster.router_metrics import DisaggregationMetrics, RouterMetrics
from corral.serve import metrics as server_metrics
from corral.serve.kv_transfer_metrics import KVTransferMetrics
from corral.serve.moe_metrics import MoEMetrics

DASHBOARD = Path(__file__).parents[2] / "examples" / "grafana" / "corral-dashboard.json"
# A series name in PromQL (corral:..., vllm:...), not followed by a label matcher's '=' or by
# the '(' of a function.
SERIES = re.compile(r"\b((?:corral|vllm):[A-Za-z0-9_:]+)")
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "info": ("_info",),
}


def _sample_names(registry: CollectorRegistry) -> set[str]:
    names = set()
    for family in registry.collect():
        for suffix in SUFFIXES.get(family.type, ("",)):
            names.add(family.name + suffix)
    return names


def exported_series() -> set[str]:
    """Every series name the server and the router can export, every optional part on."""
    server = server_metrics.ServerMetrics("m", num_speculative_tokens=2, max_loras=2)
    server.set_cache_config(block_size=16, num_blocks=64)
    values = {"model_name": "m"}
    KVTransferMetrics(server.registry, values)
    MoEMetrics(server.registry, values)
    names = _sample_names(server.registry)
    # The SLO gauges are registered when /metrics is first read (ServerMetrics.set_slo).
    names |= {"corral:" + name for name in server_metrics._SLO_DOCS}
    router = RouterMetrics(with_pool_label=True)
    DisaggregationMetrics(router.registry)
    MigrationMetrics(router.registry)
    return names | _sample_names(router.registry)


def _panels(panels: list[dict]) -> list[dict]:
    found = []
    for panel in panels:
        found.append(panel)
        found.extend(_panels(panel.get("panels", [])))
    return found


def test_every_queried_series_is_exported():
    dashboard = json.loads(DASHBOARD.read_text())
    exported = exported_series()
    assert "corral:request_success_total" in exported  # the suffix rule holds
    assert "corral:time_to_first_token_seconds_bucket" in exported
    used: dict[str, str] = {}
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            for name in SERIES.findall(target["expr"]):
                used[name] = panel["title"]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            for name in SERIES.findall(query["query"]):
                used[name] = f"variable {variable['name']}"
    unknown = {name: where for name, where in used.items() if name not in exported}
    assert not unknown, f"series no corral component exports: {unknown}"
    # What the issue asks the dashboard to show is there.
    for name in (
        "corral:request_success_total",
        "corral:time_to_first_token_seconds_bucket",
        "corral:time_per_output_token_seconds_bucket",
        "corral:e2e_request_latency_seconds_bucket",
        "corral:num_requests_running",
        "corral:num_requests_waiting",
        "corral:kv_cache_usage_perc",
        "corral:prefix_cache_hits_total",
        "corral:num_preemptions_total",
        "corral:kv_transfer_fetches_total",
        "corral:router_requests_total",
        "corral:router_failures_total",
        "corral:router_migrations_requested_total",
    ):
        assert name in used, name


def test_the_dashboard_is_well_formed():
    dashboard = json.loads(DASHBOARD.read_text())
    panels = _panels(dashboard["panels"])
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    assert variables == {"datasource", "model_name"}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}")
            if "histogram_quantile" in expr:
                assert "_bucket" in expr and "by (le)" in expr
            # Counters are only ever read through rate().
            for name in SERIES.findall(expr):
                if name.endswith("_total"):
                    assert f"rate({name}" in expr, (panel["title"], expr)
