"""Pauses before follow-up turns (tool latencies): fixed, or drawn around their mean."""

from __future__ import annotations

import random
import statistics

import pytest

from corral.workloads.builder import build_workload
from corral.workloads.options import WorkloadOptions, draw_think_time


@pytest.mark.parametrize("dist", ["exponential", "lognormal:1.0", "lognormal:0.5"])
def test_draws_keep_the_mean(dist):
    rng = random.Random(0)
    draws = [draw_think_time(rng, 2.0, dist) for _ in range(20000)]
    assert statistics.mean(draws) == pytest.approx(2.0, rel=0.05)
    assert min(draws) >= 0 and statistics.pstdev(draws) > 0.5


def test_fixed_pauses_and_a_seeded_workload():
    def pauses(dist: str, seed: int = 0) -> list[float]:
        workload = build_workload(
            WorkloadOptions(
                dataset="multi-turn", num_requests=40, num_turns=4, think_time_s=3.0,
                think_time_dist=dist, seed=seed,
            )
        )  # fmt: skip
        return [s.think_time_s for s in workload.specs if s.parent_request_id]

    assert set(pauses("fixed")) == {3.0}
    drawn = pauses("lognormal:1.0")
    assert len(set(drawn)) == 30 and drawn == pauses("lognormal:1.0")  # seeded
    assert drawn != pauses("lognormal:1.0", seed=1)


@pytest.mark.parametrize("bad", ["gaussian", "lognormal:0", "lognormal:x", "fixed:2"])
def test_bad_distributions_are_refused(bad):
    with pytest.raises(ValueError, match="think_time_dist"):
        WorkloadOptions(think_time_dist=bad)
