"""bench serve sends each request at the time the workload plans (virtual time, so exactly):
Poisson and gamma arrivals keep their rate and dispersion, a replayed trace keeps its order
and its gaps times the time scale."""

from __future__ import annotations

import csv
from datetime import datetime

import numpy as np
import pytest

from corral.paths import data_file
from corral.workloads import ArrivalOptions, WorkloadOptions, build_workload
from tests.bench.scripted import run_scripted, token_script


def sends(workload) -> list[tuple[float, str]]:
    """(time, request id) of each request, in the order the client sent them."""
    _, transport = run_scripted(workload, lambda path, body: token_script(0.01, 0.0, 1))
    by_prompt = {tuple(workload.token_ids(spec)): spec.request_id for spec in workload}
    return [(t, by_prompt[tuple(body["prompt"])]) for t, _, body in transport.requests]


def sent_times(workload) -> list[float]:
    return [t for t, _ in sends(workload)]


def random_workload(arrival: ArrivalOptions, num_requests: int = 400):
    options = WorkloadOptions(
        dataset="random", num_requests=num_requests, input_len=4, output_len=1, arrival=arrival
    )
    return build_workload(options)


@pytest.mark.parametrize(("kind", "cv"), [("poisson", 1.0), ("gamma", 3.0), ("gamma", 0.5)])
def test_sends_follow_the_planned_arrivals_with_their_rate_and_dispersion(kind, cv):
    workload = random_workload(ArrivalOptions(kind, rate=8.0, cv=cv))
    planned = [spec.arrival_time_s for spec in workload]
    sent = sent_times(workload)
    assert sent == pytest.approx(planned, abs=1e-9)
    gaps = np.diff(sent)
    # 400 gaps, fixed seed: the rate within 15 %, the gaps' coefficient of variation within 25 %.
    assert 1 / gaps.mean() == pytest.approx(8.0, rel=0.15)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.25)


def test_burst_sends_everything_at_once():
    assert sent_times(random_workload(ArrivalOptions("burst"), 20)) == [0.0] * 20


def _trace_seconds(path, count: int) -> list[float]:
    with open(path, newline="") as handle:
        stamps = [row["TIMESTAMP"] for _, row in zip(range(count), csv.DictReader(handle))]
    # '2023-11-16 18:15:46.6805900': datetime takes at most 6 fractional digits.
    return [datetime.fromisoformat(s.strip()[:26]).timestamp() for s in stamps]


def test_trace_replay_keeps_order_and_scaled_gaps():
    try:
        path = data_file(None, "azure-llm-2023", "AzureLLMInferenceTrace_conv.csv")
    except FileNotFoundError as error:
        pytest.skip(str(error))
    time_scale = 0.05
    workload = build_workload(
        WorkloadOptions(
            dataset="azure-conv",
            num_requests=60,
            length_scale=0.01,
            arrival=ArrivalOptions("trace", time_scale=time_scale),
        )
    )
    trace = _trace_seconds(path, 60)
    assert trace == sorted(trace)
    times, ids = zip(*sends(workload))
    # Sent in trace order, each gap the trace's gap times the scale (to timestamp precision).
    assert list(ids) == [f"azure-conv-{i}" for i in range(60)]
    assert np.diff(times) == pytest.approx(np.diff(trace) * time_scale, abs=1e-5)
