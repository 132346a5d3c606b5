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


def test_measured_latencies_are_replayed(tmp_path):
    measured = tmp_path / "latencies.txt"
    measured.write_text("# seconds\n0.5\n2.0  # a slow call\n\n0.25\n")
    as_json = tmp_path / "latencies.json"
    as_json.write_text("[0.5, 2.0, 0.25]")
    for path in (measured, as_json):
        workload = build_workload(
            WorkloadOptions(
                dataset="multi-turn", num_requests=40, num_turns=4,
                think_time_dist=f"measured:{path}",
            )
        )  # fmt: skip
        drawn = [s.think_time_s for s in workload.specs if s.parent_request_id]
        assert set(drawn) == {0.5, 2.0, 0.25}  # 30 follow-ups: every value, nothing else
    # A think_time_s > 0 rescales them to that mean: the file's mean is 11/12 s, so a mean
    # of 11/4 s triples each.
    rng = random.Random(0)
    rescaled = {draw_think_time(rng, 11 / 4, f"measured:{measured}") for _ in range(200)}
    assert sorted(rescaled) == pytest.approx([0.75, 1.5, 6.0])


@pytest.mark.parametrize(
    "content, reason",
    [(None, "cannot read"), ("", "at least one"), ("0.5\nsoon\n", "not numbers"), ("-1", ">= 0")],
)
def test_bad_measured_files_are_refused(tmp_path, content, reason):
    path = tmp_path / "latencies.txt"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=reason):
        WorkloadOptions(think_time_dist=f"measured:{path}")
