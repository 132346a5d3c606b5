"""Capacity search: the cheapest menu entry meeting the SLOs, the frontier, infeasible entries."""

from __future__ import annotations

import pytest

from corral.core.slo_target import SLO
from corral.sim.deployment import DeploymentOptions
from corral.sim.search import format_search, search
from corral.workloads import ArrivalOptions, WorkloadOptions, build_workload


@pytest.fixture(scope="module")
def result():
    work = build_workload(
        WorkloadOptions(
            dataset="random",
            num_requests=150,
            input_len=1024,
            output_len=64,
            arrival=ArrivalOptions("poisson", rate=40.0),
            seed=3,
        )
    )
    base = DeploymentOptions(model="llama-3.1-8b", max_model_len=4096, router="least-outstanding")
    return search(
        work,
        base,
        SLO(ttft_s=0.3, tpot_s=0.04),
        hardware_menu=["a100", "h100"],
        tp_menu=[1, 2],
        instance_menu=[1, 2, 4, 8],
        target_attainment=0.9,
    )


def test_best_is_the_cheapest_point_meeting_the_target(result):
    assert result.best is not None and result.best.meets_slo
    assert result.best.attainment >= 0.9
    assert all(
        not p.meets_slo for p in result.points if p.cost_per_hour < result.best.cost_per_hour
    )
    # one instance cannot keep TTFT under 300 ms at 40 requests/s of 1024-token prompts
    assert result.best.num_instances * result.best.tensor_parallel_size > 1


def test_frontier_is_not_dominated(result):
    frontier = result.frontier
    costs = [p.cost_per_hour for p in frontier]
    attainments = [p.attainment for p in frontier]
    assert costs == sorted(costs) and attainments == sorted(attainments)
    for point in result.points:
        assert any(
            f.cost_per_hour <= point.cost_per_hour and f.attainment >= point.attainment
            for f in frontier
        )
    assert "cheapest meeting the SLOs" in format_search(result, 0.9)


def test_models_that_do_not_fit_are_skipped():
    work = build_workload(WorkloadOptions(dataset="random", num_requests=5, input_len=16))
    outcome = search(
        work,
        DeploymentOptions(model="llama-3.1-70b", max_model_len=2048),
        SLO(ttft_s=1.0),
        hardware_menu=["l40s"],
        tp_menu=[1],
        instance_menu=[1, 2],
    )
    assert outcome.points == [] and outcome.best is None
    assert "leave no KV memory" in outcome.infeasible["l40s/tp1"]


def test_search_needs_an_slo():
    work = build_workload(WorkloadOptions(dataset="random", num_requests=5, input_len=16))
    with pytest.raises(ValueError, match="at least one SLO"):
        search(
            work, DeploymentOptions(), SLO(), hardware_menu=["h100"], tp_menu=[1], instance_menu=[1]
        )
