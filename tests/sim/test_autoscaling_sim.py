"""Autoscaling in the cluster simulator (corral/sim/autoscale.py) with the shared policy object
(corral/cluster/autoscaling.py) on a bursty scripted trace."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import pytest

from corral.cluster.autoscaling import (
    AUTOSCALING_POLICIES,
    AutoscalingConfig,
    ReplicaMetrics,
    TargetOngoingRequests,
)
from corral.sim import cli
from corral.sim.autoscale_spec import SimAutoscaleSpec
from corral.sim.cluster import ClusterSimulator, SimResult
from corral.sim.config import ClusterSpec
from corral.sim.report import build_report
from tests.sim.helpers import instance, run, spec, workload

BURST_START_S, BURST_END_S = 10.0, 20.0
COLD_START_S = 2.0
SPEC = "target-ongoing:min=1,max=4,target=8,up_delay_s=1,down_delay_s=5"


def bursty_trace():
    """One request every 2 s, a burst of 8 per second between 10 s and 20 s, quiet after,
    and one late request at 80 s (the fleet must have shrunk by then)."""
    specs = [spec(f"pre-{k}", 2.0 * k, 64, 40) for k in range(5)]
    specs += [
        spec(f"burst-{k}", BURST_START_S + k / 8, 64 + k % 7, 200)
        for k in range(int((BURST_END_S - BURST_START_S) * 8))
    ]
    specs.append(spec("late", 80.0, 64, 40))
    return workload(*specs)


def autoscaled(
    autoscale: str = SPEC,
    cold_start_s: float = COLD_START_S,
    initial: int = 1,
    router: str = "least-outstanding",
    seed: int = 0,
    price_per_device_hour: float | None = None,
) -> ClusterSpec:
    config = AutoscalingConfig.parse(autoscale)
    one = replace(
        instance(num_blocks=4096, max_model_len=1024),
        price_per_device_hour=price_per_device_hour,
    )
    return ClusterSpec(
        instances=(one,) * config.max_replicas,
        router=router,
        seed=seed,
        autoscale=SimAutoscaleSpec(config, config.initial_count(initial), cold_start_s),
    )


def provisioned_at(result: SimResult, time_s: float) -> int:
    assert result.autoscale is not None
    count = 0
    for when, provisioned, _ in result.autoscale.timeline:
        if when <= time_s:
            count = provisioned
    return count


def test_replicas_go_up_in_the_burst_and_down_after():
    result = run(autoscaled(), bursty_trace())
    scaled = result.autoscale
    assert scaled is not None
    assert provisioned_at(result, BURST_START_S - 0.5) == 1
    assert scaled.max_replicas == 4  # the burst wants ceil(ongoing / 8) > 4: capped at max
    peak = min(t for t, provisioned, _ in scaled.timeline if provisioned == 4)
    assert BURST_START_S < peak < BURST_END_S
    assert provisioned_at(result, 79.0) == 1  # back to min before the late request
    assert scaled.num_scale_ups >= 1 and scaled.num_scale_downs >= 1
    assert scaled.num_cold_starts == 3
    # The first instance plus the three started ones, each with its lifetime.
    assert len(result.instances) == len(scaled.instance_lifetimes_s) == 4
    assert scaled.instance_lifetimes_s[0] == (0.0, scaled.end_s)
    for start_s, stop_s in scaled.instance_lifetimes_s[1:]:
        assert BURST_START_S < start_s < stop_s < 80.0
    # Started instances took requests only while serving: after their cold start, before
    # they drained; and each took some.
    for started, (start_s, stop_s) in zip(result.instances[1:], scaled.instance_lifetimes_s[1:]):
        arrivals = [
            r.arrival_time_s
            for r in result.records
            if result.routes[r.request_id] == [started.index]
        ]
        assert arrivals and start_s + COLD_START_S <= min(arrivals) and max(arrivals) < stop_s


def test_no_request_is_lost_and_each_is_routed_once():
    work = bursty_trace()
    result = run(autoscaled(), work)
    assert [r.request_id for r in result.records] == [s.request_id for s in work.specs]
    for record, request_spec in zip(result.records, work.specs):
        assert record.is_ok
        assert record.num_output_tokens == request_spec.num_output_tokens
        assert len(result.routes[record.request_id]) == 1
    # Every instance, drained or not, ended with nothing left.
    assert all(not i.scheduler.has_unfinished_requests() for i in result.instances)


def test_scale_from_zero_puts_the_cold_start_in_the_first_ttft():
    cold_start_s = 7.5
    cluster = autoscaled(
        "target-ongoing:min=0,max=2,target=8,up_delay_s=0,down_delay_s=5",
        cold_start_s=cold_start_s,
        initial=0,
    )
    work = workload(
        spec("first", 3.0, 64, 10), spec("second", 3.5, 64, 10), spec("later", 40.0, 64, 10)
    )
    result = run(cluster, work)
    first, second, later = result.records
    # Held at the router from its arrival until the instance it woke serves; one step of
    # 10 ms + 128 tokens x 1 ms then gives both their first token.
    assert first.ttft_s == pytest.approx(cold_start_s + 0.010 + 0.128)
    assert second.ttft_s == pytest.approx(cold_start_s - 0.5 + 0.010 + 0.128)
    # Idle for 5 s after both finished: scaled to zero; the late request pays a cold start again.
    assert later.ttft_s == pytest.approx(cold_start_s + 0.010 + 0.064)
    scaled = result.autoscale
    assert scaled is not None
    assert scaled.num_cold_starts == 2
    assert provisioned_at(result, 0.0) == 0 and provisioned_at(result, 39.0) == 0


def test_same_seed_same_run():
    cluster = autoscaled(router="power-of-two", seed=5)
    first, second = run(cluster, bursty_trace()), run(cluster, bursty_trace())
    assert first.autoscale == second.autoscale
    assert first.routes == second.routes
    assert [list(r.token_times_s) for r in first.records] == [
        list(r.token_times_s) for r in second.records
    ]


def test_fewer_instance_seconds_than_a_fixed_fleet_of_max():
    work = bursty_trace()
    result = run(autoscaled(), work)
    fixed = run(ClusterSpec(instances=(instance(num_blocks=4096, max_model_len=1024),) * 4), work)
    assert result.autoscale is not None
    assert result.autoscale.instance_seconds < 0.5 * 4 * fixed.end_time_s
    # The report charges each instance for its lifetime: at 3600 $/h, one dollar per second.
    priced = run(autoscaled(price_per_device_hour=3600.0), work)
    report = build_report(priced)
    assert report.autoscale is not None
    assert report.cost_usd == pytest.approx(report.autoscale.instance_seconds)
    assert report.autoscale.fixed_fleet_instance_seconds == pytest.approx(
        4 * report.autoscale.end_s
    )


def test_the_shared_policy_class_makes_every_decision(monkeypatch):
    calls: list[tuple[float, list[ReplicaMetrics], int, int]] = []
    decide = TargetOngoingRequests.decide

    def spy(self, now_s, replicas, num_starting, num_queued=0):
        calls.append((now_s, list(replicas), num_starting, num_queued))
        return decide(self, now_s, replicas, num_starting, num_queued)

    monkeypatch.setattr(TargetOngoingRequests, "decide", spy)
    sim = ClusterSimulator(autoscaled(), bursty_trace())
    assert sim.autoscaler is not None
    assert type(sim.autoscaler.policy) is AUTOSCALING_POLICIES.get("target-ongoing")
    result = sim.run()
    assert result.autoscale is not None
    # One decision per virtual second from 0 until the last request finished.
    assert len(calls) == int(result.autoscale.end_s) + 1
    assert [now for now, *_ in calls[:3]] == [0.0, 1.0, 2.0]
    during_burst = [replicas for now, replicas, _, _ in calls if now == 15.0][0]
    assert sum(r.num_running + r.num_waiting for r in during_burst) > 8


def test_autoscaling_is_refused_for_disaggregated_clusters():
    config = AutoscalingConfig.parse("target-ongoing:max=2")
    with pytest.raises(ValueError, match="mixed instances only"):
        ClusterSpec(
            instances=(instance(role="prefill"), instance(role="decode")),
            autoscale=SimAutoscaleSpec(config, 1, 1.0),
        )
    with pytest.raises(ValueError, match="one instance per max_replicas"):
        ClusterSpec(instances=(instance(),) * 3, autoscale=SimAutoscaleSpec(config, 1, 1.0))
    with pytest.raises(ValueError, match="cold_start_s must be >= 0"):
        SimAutoscaleSpec(config, 1, -1.0)


def test_command_line_run_reports_autoscaling(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="corral simulate")
    cli.add_arguments(parser)
    out = tmp_path / "report.json"
    argv = "run --dataset random --num-requests 60 --input-len 200 --output-len 50"
    argv += " --request-rate 30 --model smollm-135m --hardware a100"
    argv += " --autoscale target-ongoing:min=0,max=3,target=4,up_delay_s=0,down_delay_s=2"
    argv += f" --cold-start-s 3 --autoscale-interval-s 0.5 --result-json {out}"
    assert cli.run(parser.parse_args(argv.split())) == 0
    text = capsys.readouterr().out
    assert "Requests completed / failed:            60 / 0" in text
    assert "autoscaling target-ongoing:min=0,max=3,target=4" in text
    assert "cold start 3.00 s, decisions every 0.5 s" in text
    document = json.loads(out.read_text())
    scaled = document["autoscale"]
    assert scaled["cold_start_s"] == 3.0 and scaled["max_replicas"] >= 1
    assert 0 < scaled["instance_seconds"] < scaled["fixed_fleet_instance_seconds"]
    bad = parser.parse_args(argv.replace("max=3", "max=three").split())
    assert cli.run(bad) == 2


def test_the_default_cold_start_is_the_measured_one():
    from corral.sim.autoscale_spec import default_cold_start_s, measured_cold_start_s
    from corral.sim.deployment import DeploymentOptions, build_cluster

    options = DeploymentOptions(
        model="smollm-135m",
        hardware="a100",
        autoscale=AutoscalingConfig.parse("target-ongoing:max=3"),
        num_instances=2,
    )
    cluster = build_cluster(options)
    assert cluster.autoscale is not None and len(cluster.instances) == 3
    assert cluster.autoscale.initial_replicas == 2
    assert cluster.autoscale.cold_start_s == default_cold_start_s()
    measured = measured_cold_start_s()
    if measured is not None:  # the repository ships docs/figures/cold_start.json
        assert cluster.autoscale.cold_start_s == measured
    explicit = build_cluster(replace(options, cold_start_s=12.0))
    assert explicit.autoscale is not None and explicit.autoscale.cold_start_s == 12.0
