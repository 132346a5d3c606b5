"""benchmarks/router.py runs end to end (--quick) on the tiny model: 2 pinned replicas, a
router per run, every policy measured on both workloads with the simulator's prediction beside
it, and the router overhead row."""

from __future__ import annotations

import json
import os
import sys

import pytest

from benchmarks.router import POLICIES, WORKLOADS, main

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sched_setaffinity, prctl"),
]


def test_quick_run_writes_every_policy_and_the_overhead(tiny_model, tmp_path, capsys):
    cores = sorted(os.sched_getaffinity(0))
    cores = (cores * 2)[:2]  # one core each; both on the same one on a 1-core machine
    out = tmp_path / "router.json"
    result = main(
        [
            "--quick", "--model", str(tiny_model), "--json-out", str(out),
            "--cores", ",".join(map(str, cores)), "--work-dir", str(tmp_path / "work"),
        ]
    )  # fmt: skip
    written = json.loads(out.read_text())
    assert written["rows"] == json.loads(json.dumps(result["rows"]))
    rows = {(row["workload"], row["policy"]): row for row in written["rows"]}
    assert set(rows) == {(w, p) for w in WORKLOADS for p in POLICIES}
    for row in rows.values():
        assert row["num_failed"] == 0
        assert row["ttft_mean_ms"] > 0 and row["ttft_p99_ms"] >= row["ttft_p50_ms"]
        assert 0 <= row["prefix_hit_rate"] <= 1
        assert row["sim_ttft_mean_ms"] > 0 and row["sim_own_steps_ttft_mean_ms"] > 0
        # The measured request path is added to the engines' TTFT, nothing else changes.
        assert row["sim_ttft_mean_ms"] >= row["sim_no_path_ttft_mean_ms"]
    paths_s = written["overhead"]["request_path_s"]
    assert set(paths_s) == set(POLICIES) and all(p >= 0 for p in paths_s.values())
    for run in written["runs"]:
        assert sum(run["routed"]) == run["num_requests"] == run["num_completed"]
        assert run["sim"]["request_path_ms"] == pytest.approx(1e3 * paths_s[run["policy"]])
        assert run["sim_no_path"]["request_path_ms"] == 0
    overhead = {row["path"]: row for row in written["overhead"]["rows"]}
    assert set(overhead) == {
        "direct (replica 0)",
        "router round-robin (1 backend)",
        "router prefix-aware (1 backend)",
    }
    assert all(row["num_requests"] == 10 for row in overhead.values())
    assert "overhead_p50_ms" in overhead["router round-robin (1 backend)"]
    machine = written["machine_start"]
    assert machine["num_cores"] >= 1 and len(machine["load_average_1_5_15"]) == 3
    assert "multi_turn_speedup" in written["targets"] and "sim_error" in written["targets"]
    assert "target multi_turn_speedup" in capsys.readouterr().out
