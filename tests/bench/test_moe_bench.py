"""benchmarks/moe.py runs end to end (--quick) on tiny MoE and dense models: both measured at
both batch sizes, ratios to dense taken, the MoE layer timed phase by phase."""

from __future__ import annotations

import json

from benchmarks.moe import main


def test_quick_run_measures_both_models(tmp_path, capsys):
    out = tmp_path / "moe.json"
    result = main(["--quick", "--dtype", "float32", "--json-out", str(out)])
    assert json.loads(out.read_text())["rows"] == result["rows"]
    rows = {(row["model"], row["batch"]): row for row in result["rows"]}
    assert set(rows) == {(m, b) for m in ("moe", "dense") for b in (1, 4)}
    assert all(row["step_ms"] > 0 and row["output_tok_s"] > 0 for row in rows.values())
    assert rows[("dense", 4)]["ratio_to_dense"] == 1.0
    params = result["params"]
    assert params["moe"]["total"] > params["dense"]["total"]
    # equal active parameters but for the router (num_experts x hidden per layer)
    shape = result["shape"]
    router = 8 * shape["hidden_size"] * shape["num_hidden_layers"]
    assert params["moe"]["active"] - params["dense"]["active"] == router
    for phases in result["moe_layer_phases_ms"].values():
        assert set(phases) == {"routing", "dispatch", "experts", "combine", "dense_mlp"}
    assert result["machine"]["torch_threads"] >= 1
    assert "target (MoE step within 1.5x of dense at batch 4)" in capsys.readouterr().out
