"""Long prompts: prefill chunks attend over their context in key chunks (online softmax), so
memory stays bounded; greedy output stays exact against transformers."""

from __future__ import annotations

import random

from corral import LLM, SamplingParams
from corral.model.layers import attention as attn
from tests.model.oracle import TEST_DEVICE, hf_greedy


def test_key_chunked_prefill_of_a_long_prompt_is_exact(tiny_model, monkeypatch):
    # 64-key chunks make the 600-token prompt's later chunks take the online-softmax path.
    monkeypatch.setattr(attn, "_KEY_CHUNK", 64)
    monkeypatch.setattr(attn, "_QUERY_CHUNK", 32)
    rng = random.Random(3)
    prompt = [rng.randrange(3, 500) for _ in range(600)]
    expected, _ = hf_greedy(tiny_model, prompt, 8)
    llm = LLM(
        model=str(tiny_model),
        device=TEST_DEVICE,
        dtype="float32",
        max_num_batched_tokens=160,
        num_blocks=64,
    )
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    [output] = llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)
    assert output.outputs[0].token_ids == expected
