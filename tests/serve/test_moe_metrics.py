"""Expert load on /metrics: a tiny Mixtral's tokens routed per expert and layer, top-k of them
per computed token, exported as corral:moe_expert_tokens_total; a dense model exports none."""

from __future__ import annotations

import asyncio
import re

from corral import SamplingParams
from corral.engine.async_llm import AsyncLLM
from corral.llm import engine_config_from_kwargs
from corral.serve.metrics import ServerMetrics
from tests.model.test_moe_models import moe_model_factory  # noqa: F401 (a fixture)

PARAMS = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
_SAMPLE = re.compile(r"^corral:moe_expert_tokens_total\{(.*)\} (\S+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def serve_and_scrape(model_dir) -> tuple[str, AsyncLLM]:  # noqa: ANN001
    config = engine_config_from_kwargs(model=str(model_dir), dtype="float32", num_blocks=64)
    metrics = ServerMetrics("m", None, None)

    async def main() -> AsyncLLM:
        engine = await AsyncLLM.create(config, multiprocess=False)
        engine.stat_loggers.append(metrics.observe)
        async for _ in engine.generate("a b c d e f", PARAMS, "r"):
            pass
        for _ in range(100):  # the idle engine's next stats read the counts at once
            await asyncio.sleep(0.02)
            if "moe_expert_tokens_total" in metrics.render(True).decode():
                break
        await engine.shutdown()
        return engine

    engine = asyncio.run(asyncio.wait_for(main(), 120))
    return metrics.render(True).decode(), engine


def test_expert_tokens_are_exported_per_layer_and_expert(moe_model_factory):  # noqa: F811
    text, engine = serve_and_scrape(moe_model_factory("mixtral"))
    counts: dict[int, dict[int, float]] = {}
    for line in text.splitlines():
        if match := _SAMPLE.match(line):
            labels = dict(_LABEL.findall(match[1]))
            counts.setdefault(int(labels["layer"]), {})[int(labels["expert"])] = float(match[2])
    assert counts, text
    per_layer = {layer: sum(experts.values()) for layer, experts in counts.items()}
    top_k = 2  # the family's num_experts_per_tok
    assert len(set(per_layer.values())) == 1  # every MoE layer saw the same tokens
    assert next(iter(per_layer.values())) % top_k == 0 and min(per_layer.values()) > 0
    # At least the prompt and the 7 generated tokens that were fed back were routed.
    assert next(iter(per_layer.values())) >= top_k * (6 + 7)


def test_a_dense_model_exports_no_expert_series(tiny_model):
    text, _ = serve_and_scrape(tiny_model)
    assert "moe_expert_tokens" not in text
