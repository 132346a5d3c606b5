"""`corral generate --lora-modules NAME=PATH --lora NAME` generates with the adapter."""

from __future__ import annotations

import json

from corral import LLM, LoRARequest, SamplingParams
from corral.cli import main
from tests.lora.adapters import ADAPTERS, build_adapter


def test_generate_with_an_adapter_from_the_command_line(tiny_model, tmp_path, capsys):
    adapter = build_adapter(tiny_model, tmp_path / "a", seed=5, **ADAPTERS["all-r8"])
    prompt = "The quick brown fox"
    common = ["--model", str(tiny_model), "--dtype", "float32", "--max-tokens", "8", "--json"]
    lora = ["--lora-modules", f"mine={adapter}", "--lora", "mine"]
    assert main(["generate", prompt, *common, *lora]) == 0
    with_adapter = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["generate", prompt, *common]) == 0
    without = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    llm = LLM(model=str(tiny_model), dtype="float32", enable_lora=True)
    params = SamplingParams(temperature=0, max_tokens=8)
    (expected,) = llm.generate(prompt, params, lora_request=LoRARequest("mine", str(adapter)))
    assert with_adapter["outputs"][0]["token_ids"] == expected.outputs[0].token_ids
    assert with_adapter["outputs"][0]["token_ids"] != without["outputs"][0]["token_ids"]
