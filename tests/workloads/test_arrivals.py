"""Arrival processes: rate and dispersion for a fixed seed, determinism, trace replay."""

from __future__ import annotations

import numpy as np
import pytest

from corral.workloads.arrivals import ArrivalOptions, make_arrivals

N = 20_000


def gaps(times: list[float]) -> np.ndarray:
    return np.diff(np.asarray(times))


def test_poisson_rate_and_dispersion():
    times = make_arrivals(ArrivalOptions("poisson", rate=4.0)).times(N, seed=1)
    g = gaps(times)
    assert times[0] == 0.0 and np.all(g >= 0)
    assert g.mean() == pytest.approx(0.25, rel=0.02)
    assert g.std() / g.mean() == pytest.approx(1.0, rel=0.03)  # exponential: CV 1


@pytest.mark.parametrize("cv", [0.5, 2.0, 4.0])
def test_gamma_rate_and_burstiness(cv):
    times = make_arrivals(ArrivalOptions("gamma", rate=10.0, cv=cv)).times(N, seed=2)
    g = gaps(times)
    assert g.mean() == pytest.approx(0.1, rel=0.05)
    assert g.std() / g.mean() == pytest.approx(cv, rel=0.06)


def test_same_seed_same_times_other_seed_other_times():
    process = make_arrivals(ArrivalOptions("gamma", rate=3.0, cv=2.0))
    assert process.times(100, seed=7) == process.times(100, seed=7)
    assert process.times(100, seed=7) != process.times(100, seed=8)


def test_burst_sends_everything_at_zero():
    assert make_arrivals(ArrivalOptions("burst")).times(5, seed=0) == [0.0] * 5


def test_trace_keeps_order_and_scales_gaps():
    trace = [100.0, 100.5, 101.5, 101.5, 104.0]
    times = make_arrivals(ArrivalOptions("trace", time_scale=0.1)).times(5, 0, trace)
    assert times == pytest.approx([0.0, 0.05, 0.15, 0.15, 0.4])
    assert times == sorted(times)


@pytest.mark.parametrize(
    "options, message",
    [
        (ArrivalOptions("poisson"), "request rate"),
        (ArrivalOptions("poisson", rate=0.0), "> 0"),
        (ArrivalOptions("gamma", rate=1.0, cv=0.0), "cv"),
        (ArrivalOptions("trace", time_scale=-1.0), "time scale"),
        (ArrivalOptions("uniformly"), "unknown arrival process"),
    ],
)
def test_bad_arrival_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        make_arrivals(options)


def test_trace_arrivals_need_timestamps():
    with pytest.raises(ValueError, match="timestamps"):
        make_arrivals(ArrivalOptions("trace")).times(3, 0, None)
