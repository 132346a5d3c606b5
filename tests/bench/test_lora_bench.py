"""benchmarks/lora_serving.py runs end to end (--quick) on a tiny random model: every
configuration measured, ratios to the base model taken, adapter loads timed."""

from __future__ import annotations

import json

from benchmarks.lora_serving import main


def test_quick_run_writes_every_configuration(tiny_model, tmp_path, capsys):
    out = tmp_path / "lora.json"
    result = main(["--quick", "--model", str(tiny_model), "--json-out", str(out)])
    assert json.loads(out.read_text())["rows"] == result["rows"]
    configs = {row["config"]: row for row in result["rows"]}
    assert set(configs) == {"base", "base+lora", "merged", "1 adapters", "2 adapters"}
    assert configs["base"]["ratio_to_base"] == 1.0
    assert all(row["output_tok_s"] > 0 for row in result["rows"])
    load = result["adapter_load"]
    assert load["cold_ms"] > 0 and load["warm_ms"] > 0 and load["adapter_mib"] > 0
    assert "target (at least 0.7x base with 2 adapters)" in capsys.readouterr().out
