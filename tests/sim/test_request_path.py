"""The request path outside the engines (client, router, frontend) in the simulator: every
request reaches its instance request_path_s after it arrives, so its TTFT and end-to-end latency
grow by exactly that and nothing else changes."""

from __future__ import annotations

import argparse

import pytest

from corral.sim import cli
from corral.sim.cli_args import deployment_options_from_args
from corral.sim.config import ClusterSpec
from tests.sim.helpers import instance, run, spec, workload


def test_request_path_adds_to_ttft_and_e2e_only():
    work = workload(
        *(spec(f"r{i}", 0.013 * i, 40 + 17 * i, 5 + i % 4) for i in range(12)),
    )
    results = {}
    for path_s in (0.0, 0.007):
        cluster = ClusterSpec((instance(), instance()), router="least-outstanding",
                              request_path_s=path_s)  # fmt: skip
        results[path_s] = {r.request_id: r for r in run(cluster, work).records}
    for request_id, direct in results[0.0].items():
        delayed = results[0.007][request_id]
        assert delayed.ttft_s == pytest.approx(direct.ttft_s + 0.007, abs=1e-9)
        assert delayed.e2e_s == pytest.approx(direct.e2e_s + 0.007, abs=1e-9)
        assert delayed.num_output_tokens == direct.num_output_tokens
        if direct.tpot_s is not None:
            assert delayed.tpot_s == pytest.approx(direct.tpot_s, abs=1e-9)


def test_request_path_flag_and_bad_value():
    parser = argparse.ArgumentParser(prog="corral simulate")
    cli.add_arguments(parser)
    args = parser.parse_args(["run", "--request-path-ms", "7.5"])
    assert deployment_options_from_args(args).request_path_s == pytest.approx(0.0075)
    with pytest.raises(ValueError, match="request_path_s must be >= 0"):
        ClusterSpec((instance(),), request_path_s=-0.001)
