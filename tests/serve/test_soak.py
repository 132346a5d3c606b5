"""A short soak (benchmarks/soak.py): a few hundred requests of the soak's mix, with random client
disconnects, against a live server on the tiny model with a small KV pool (so requests are
preempted and cached blocks evicted). Every soak check but RSS growth, which a run this short
cannot measure: no 5xx, every non-aborted response complete and consistent, no unexpected 4xx or
transport error, the KV pool clean and its integrity holding afterwards; and no traceback in the
server's log."""

from __future__ import annotations

import json

import pytest

from benchmarks.soak import parse_args, run_soak

pytestmark = pytest.mark.slow


def test_short_soak_leaves_no_error_no_incomplete_response_and_a_clean_kv_pool(start_server):
    server = start_server("--debug-check-integrity", "--num-kv-blocks", "64", "--max-num-seqs", "8")
    args = parse_args(
        [
            "--url",
            server.base_url,
            "--server-pid",
            str(server.process.pid),
            "--num-requests",
            "300",
            "--warmup-requests",
            "50",
            "--concurrency",
            "16",
            "--seed",
            "13",
            "--no-rss-check",
            "--request-timeout-s",
            "60",
            "--max-duration-s",
            "150",
        ]
    )
    report = run_soak(args)
    failed = [check for check in report["checks"] if check["passed"] is False]
    assert not failed, json.dumps(
        {
            "failed": failed,
            "counts": report["counts"],
            "problem_kinds": report["problem_kinds"],
            "first failures": report["failures"][:3],
        },
        indent=1,
    )
    counts = report["counts"]
    assert counts["aborted"] > 0 and counts["expected_4xx"] > 0 and counts["ok"] > 200, counts
    log = server.log_path.read_text(errors="replace")
    assert "Traceback" not in log, server.log()
