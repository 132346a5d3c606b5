"""benchmarks/disaggregation.py runs end to end (--quick) on the tiny model: both
configurations measured, the transfer counted, the simulator's prediction beside each run."""

from __future__ import annotations

import json
import os
import sys

import pytest

from benchmarks.disaggregation import CONFIGS, main

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sched_setaffinity, prctl"),
]


def tiny_trace(folder) -> None:
    """An Azure-format conversation trace of 12 requests (the real one is not in a fresh
    clone's reach: CORRAL_DATA_DIR points here)."""
    rows = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for index in range(12):
        rows.append(f"2023-11-16 18:00:{index:02d}.0000000,{300 + 70 * index},{40 + 8 * index}")
    (folder / "azure-llm-2023").mkdir()
    (folder / "azure-llm-2023" / "AzureLLMInferenceTrace_conv.csv").write_text("\n".join(rows))


def test_quick_run_measures_both_configurations(tiny_model, tmp_path, monkeypatch):
    tiny_trace(tmp_path)
    monkeypatch.setenv("CORRAL_DATA_DIR", str(tmp_path))
    cores = sorted(os.sched_getaffinity(0))
    cores = (cores * 2)[:2]
    out = tmp_path / "disaggregation.json"
    main([
        "--quick", "--model", str(tiny_model), "--json-out", str(out),
        "--cores", ",".join(map(str, cores)), "--work-dir", str(tmp_path / "work"),
    ])  # fmt: skip
    written = json.loads(out.read_text())
    runs = {run["config"]: run for run in written["runs"]}
    assert set(runs) == set(CONFIGS)
    for run in runs.values():
        assert run["num_failed"] == 0 and run["num_completed"] == run["num_requests"]
        assert run["ttft_p99_ms"] >= run["ttft_p50_ms"] > 0
        assert run["sim"]["ttft_p50_ms"] > 0
    transfer = runs["disaggregated"]["transfer"]
    assert transfer["fetches_failed"] == 0 and transfer["fetches_ok"] >= 1
    assert transfer["bytes"] > 0 and "transfer" not in runs["colocated"]
