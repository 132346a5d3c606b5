"""What the fuzz tests share: the server's flags, the size of a run, a per-request timeout, the
tally of what was sent and answered, and the checks that the engine survived.

The in-suite run is small (tens of seconds). CORRAL_FUZZ_EXAMPLES=N makes every fuzz test of a
route with a body run N examples instead (the long run), and CORRAL_FUZZ_REPORT=PATH writes the
tally there as JSON:

    CORRAL_FUZZ_EXAMPLES=1000 CORRAL_FUZZ_REPORT=fuzz.json OMP_WAIT_POLICY=PASSIVE \
        .venv/bin/python -m pytest -q tests/serve/test_fuzz_*.py
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.serve.conftest import auth
from tests.serve.test_overload_disconnect import assert_kv_pool_clean

EXAMPLES_ENV = "CORRAL_FUZZ_EXAMPLES"
REPORT_ENV = "CORRAL_FUZZ_REPORT"
# A request that gets no answer this long is a hang. The heaviest valid request on the fuzz
# server (256 completions of up to 64 tokens on the tiny model) takes seconds, not minutes.
REQUEST_TIMEOUT_S = 120.0
# A small context keeps the heaviest request short; a small pool makes large n preempt.
SERVER_ARGS = (
    "--max-model-len",
    "64",
    "--num-kv-blocks",
    "48",
    "--max-num-seqs",
    "16",
    "--debug-check-integrity",
    "--no-access-log",
)


def num_examples(in_suite: int) -> int:
    """in_suite, unless the environment asks for a long run."""
    return max(in_suite, int(os.environ.get(EXAMPLES_ENV, in_suite)))


@dataclass
class Tally:
    """Cases sent and statuses answered, per source (schemathesis or a strategy) and route."""

    statuses: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    def count(self, source: str, route: str, status: int | str) -> None:
        self.statuses[f"{source} {route} {status}"] += 1

    def write(self) -> None:
        path = os.environ.get(REPORT_ENV)
        if not path:
            return
        cases = sum(self.statuses.values())
        report = {"cases": cases, "statuses": dict(sorted(self.statuses.items()))}
        report["failures"] = self.failures
        Path(path).write_text(json.dumps(report, indent=1) + "\n")


def assert_engine_alive_and_kv_intact(server) -> None:
    """/health 200, and once every request has ended: no request left in the engine, every KV
    block back in the pool, the KV manager's integrity check passing (/debug/kv)."""
    health = httpx.get(server.base_url + "/health", timeout=30)
    assert health.status_code == 200, health.text
    assert_kv_pool_clean(server)
    kv = httpx.get(server.base_url + "/debug/kv", headers=auth(), timeout=30)
    assert kv.status_code == 200, kv.text
