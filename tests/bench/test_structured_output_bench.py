"""benchmarks/structured_output.py runs end to end (--quick) on a tiny random model and writes
its figures: overhead rows for both workloads, compile times for the whole schema set, and the
mask cost per token."""

from __future__ import annotations

import json

import pytest

from benchmarks.structured_output import main
from benchmarks.structured_output_schemas import COMPILE_SCHEMAS
from corral.paths import data_file


def test_quick_run_writes_every_table(tiny_model, tmp_path, capsys):
    try:
        data_file(None, "gsm8k", "test.jsonl")
    except FileNotFoundError as error:
        pytest.skip(str(error))
    out = tmp_path / "structured_output.json"
    result = main(["--quick", "--model", str(tiny_model), "--json-out", str(out)])
    assert json.loads(out.read_text())["overhead"] == result["overhead"]
    assert {(row["workload"], row["concurrency"]) for row in result["overhead"]} == {
        (workload, concurrency) for workload in ("json", "regex") for concurrency in (1, 4)
    }
    for row in result["overhead"]:
        assert row["output_tokens"] >= row["num_requests"] > 0
        assert row["constrained_decode_tok_s"] > 0 and row["unconstrained_decode_tok_s"] > 0
    compiled = {row["constraint"] for row in result["compile"]["rows"]}
    assert set(COMPILE_SCHEMAS) <= compiled
    assert all(row["cold_ms"] > 0 for row in result["compile"]["rows"])
    xgrammar = [row for row in result["mask"] if row["library"] == "xgrammar"]
    assert len(xgrammar) == 3 and all(row["num_refused"] == 0 for row in xgrammar)
    assert "target (at most 10%" in capsys.readouterr().out
