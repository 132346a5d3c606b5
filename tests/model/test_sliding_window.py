"""Sliding-window attention (Mistral): exact against transformers past the window while the
blocks behind every layer's window go back to the pool (corral/core/kv_window.py)."""

from __future__ import annotations

import random

import pytest

from corral import LLM, SamplingParams
from corral.core.kv_cache import KVCacheManager
from tests.conftest import TINY_SHAPE, build_tiny_model
from tests.model.oracle import TEST_DEVICE, hf_greedy

WINDOW = 16
MAX_TOKENS = 40


@pytest.fixture(scope="module")
def mistral_path(tmp_path_factory, tokenizer_dir):
    path = tmp_path_factory.mktemp("mistral-window")
    return build_tiny_model(
        path, tokenizer_dir, "mistral", 77, **{**TINY_SHAPE, "sliding_window": WINDOW}
    )


@pytest.fixture(scope="module")
def prompts_and_oracle(mistral_path):
    rng = random.Random(5)
    prompts = [[rng.randrange(3, 500) for _ in range(n)] for n in (5, 17, 40, 100)]
    return prompts, [hf_greedy(mistral_path, prompt, MAX_TOKENS)[0] for prompt in prompts]


@pytest.fixture
def dropped_blocks(monkeypatch):
    """How many blocks the KV managers released as they fell behind the window."""
    counts = {"dropped": 0}
    original = KVCacheManager.drop_blocks

    def counting(self, request, first_live_position, num_kept_blocks):
        dropped = original(self, request, first_live_position, num_kept_blocks)
        counts["dropped"] += dropped
        return dropped

    monkeypatch.setattr(KVCacheManager, "drop_blocks", counting)
    return counts


@pytest.mark.parametrize(
    "options",
    [
        dict(num_blocks=256, block_size=16),
        # 24 blocks of 4 hold 96 slots, less than the longest request (140 tokens): it runs
        # only because its old blocks go back to the pool.
        dict(num_blocks=24, block_size=4, max_num_batched_tokens=8, max_num_seqs=1),
        # Chunked prefill and several requests competing for a small pool: preemptions.
        dict(num_blocks=16, block_size=4, max_num_batched_tokens=12),
        dict(num_blocks=40, block_size=8, enable_prefix_caching=False),
    ],
    ids=["roomy", "pool-smaller-than-request", "preemption", "no-prefix-cache"],
)
def test_greedy_exact_past_the_window_and_blocks_return(
    mistral_path, prompts_and_oracle, dropped_blocks, options
):
    prompts, oracle = prompts_and_oracle
    llm = LLM(model=str(mistral_path), device=TEST_DEVICE, dtype="float32", **options)
    assert llm.engine.scheduler.kv_window is not None
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    for prompt, output, expected in zip(prompts, outputs, oracle, strict=True):
        assert output.outputs[0].token_ids == expected, f"prompt of {len(prompt)} tokens"
        assert output.outputs[0].finish_reason == "length"
    assert dropped_blocks["dropped"] > 0
    if options["num_blocks"] == 16:
        assert llm.engine.scheduler.num_preemptions > 0
    kv = llm.engine.kv_manager
    kv.check_integrity()
    assert kv.num_free_blocks == kv.num_blocks
    # A second pass hits the prefix cache for blocks that were dropped and stayed cached.
    again = llm.generate([{"prompt_token_ids": prompts[-1]}], params, use_tqdm=False)
    assert again[0].outputs[0].token_ids == oracle[-1]
    kv.check_integrity()


@pytest.fixture(scope="module")
def qwen2_hybrid_paths(tmp_path_factory, tokenizer_dir):
    """(hybrid, full): the same random Qwen2 weights, layer 0 full attention and layer 1 within
    a 16-token window (use_sliding_window, max_window_layers 1), and without any window."""
    paths = []
    for use_window in (True, False):
        path = tmp_path_factory.mktemp(f"qwen2-hybrid-{use_window}")
        window = {"use_sliding_window": use_window, "sliding_window": WINDOW}
        config = {**TINY_SHAPE, **window, "max_window_layers": 1}
        paths.append(build_tiny_model(path, tokenizer_dir, "qwen2", 78, **config))
    return paths


@pytest.mark.parametrize(
    "options",
    [dict(), dict(max_num_batched_tokens=12, num_blocks=48, block_size=4)],
    ids=["one-step-prefill", "chunked-and-preempted"],
)
def test_per_layer_windows_exact_against_transformers(qwen2_hybrid_paths, options):
    hybrid, full = qwen2_hybrid_paths
    rng = random.Random(6)
    prompts = [[rng.randrange(3, 500) for _ in range(n)] for n in (9, 60, 100)]
    expected = [hf_greedy(hybrid, prompt, 24)[0] for prompt in prompts]
    # The window changes the output: the test would see a model that ignored it.
    assert expected != [hf_greedy(full, prompt, 24)[0] for prompt in prompts]
    llm = LLM(model=str(hybrid), device=TEST_DEVICE, dtype="float32", **options)
    arch = llm.engine.arch
    assert (arch.sliding_window, arch.windowed_layers) == (WINDOW, (1,))
    # Layer 0 attends to everything: no block may go.
    assert llm.engine.scheduler.kv_window is None
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == expected
    if options:
        assert llm.engine.scheduler.num_preemptions > 0
