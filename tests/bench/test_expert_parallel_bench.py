"""benchmarks/expert_parallel.py runs end to end (--quick): every configuration measured at both
batch sizes against the one-process baseline, threads shared out, rank shares summing to 1."""

from __future__ import annotations

import json

from benchmarks.expert_parallel import CONFIGS, main


def test_quick_run_measures_every_configuration(tmp_path):
    out = tmp_path / "expert_parallel.json"
    result = main(["--quick", "--dtype", "float32", "--num-threads", "2", "--json-out", str(out)])
    assert json.loads(out.read_text())["rows"] == result["rows"]
    rows = {(row["config"], row["batch"]): row for row in result["rows"]}
    assert set(rows) == {(name, batch) for name in CONFIGS for batch in (1, 4)}
    assert all(row["step_ms"] > 0 and row["output_tok_s"] > 0 for row in rows.values())
    assert rows[("1 process", 4)]["speedup_vs_one_process"] == 1.0
    assert rows[("1 process", 1)]["torch_threads_per_process"] == 2
    assert rows[("2 processes, expert-parallel", 1)]["torch_threads_per_process"] == 1
    for shares in result["expert_parallel_rank_shares"].values():
        assert len(shares) == 2 and abs(sum(shares) - 1) < 0.01 and min(shares) > 0
