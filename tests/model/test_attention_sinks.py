"""Attention sinks (StreamingLLM, --kv-window-policy sink:N,window:W): generation runs on to 4x
the model's context with a bounded KV pool, and matches a direct implementation of the paper's
rule (keep the first N and the last W tokens' KV, number them 0..N+W-1 in cache order, rotate
keys and query by those positions) written here on transformers' own modules."""

from __future__ import annotations

import random

import pytest
import torch

from corral import LLM, SamplingParams
from corral.core.kv_cache import KVCacheManager
from corral.model.layers import attention
from tests.conftest import build_tiny_model
from tests.model.oracle import TEST_DEVICE, hf_model

CONTEXT = 64
SINKS, WINDOW = 4, 28
POLICY = f"sink:{SINKS},window:{WINDOW}"


@pytest.fixture(scope="module")
def llama_path(tmp_path_factory, tokenizer_dir):
    path = tmp_path_factory.mktemp("llama-sinks")
    return build_tiny_model(
        path,
        tokenizer_dir,
        "llama",
        31,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=CONTEXT,
    )


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


@torch.inference_mode()
def streaming_reference(model, prompt: list[int], num_new: int) -> list[int]:
    """Greedy tokens under StreamingLLM's rule, one token at a time: unrotated keys and values
    per layer for the kept tokens, evicting the oldest non-sink one when N + W are kept, and
    rotary positions counted in the cache."""
    config = model.config
    num_heads, num_kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = config.hidden_size // num_heads
    group = num_heads // num_kv_heads
    layers = model.model.layers
    keys: list[list[torch.Tensor]] = [[] for _ in layers]
    values: list[list[torch.Tensor]] = [[] for _ in layers]
    generated: list[int] = []
    tokens = list(prompt)
    position = 0
    while len(generated) < num_new:
        token = tokens[position]
        if len(keys[0]) == SINKS + WINDOW:
            for layer_keys, layer_values in zip(keys, values):
                del layer_keys[SINKS], layer_values[SINKS]
        hidden = model.model.embed_tokens(torch.tensor([[token]]))
        for index, layer in enumerate(layers):
            attn = layer.self_attn
            normed = layer.input_layernorm(hidden)
            query = attn.q_proj(normed).view(num_heads, head_dim)
            keys[index].append(attn.k_proj(normed).view(num_kv_heads, head_dim))
            values[index].append(attn.v_proj(normed).view(num_kv_heads, head_dim))
            count = len(keys[index])
            cos, sin = model.model.rotary_emb(hidden, torch.arange(count).unsqueeze(0))
            cos, sin = cos[0].unsqueeze(1), sin[0].unsqueeze(1)  # [count, 1, head_dim]
            cached_keys = _rotate(torch.stack(keys[index]), cos, sin)  # [count, kv, dim]
            query = _rotate(query, cos[-1], sin[-1])
            cached_keys = cached_keys.repeat_interleave(group, dim=1)
            cached_values = torch.stack(values[index]).repeat_interleave(group, dim=1)
            scores = torch.einsum("hd,khd->hk", query, cached_keys) * head_dim**-0.5
            attended = torch.einsum("hk,khd->hd", scores.softmax(-1), cached_values)
            hidden = hidden + attn.o_proj(attended.reshape(1, 1, -1))
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        position += 1
        if position == len(tokens):
            logits = model.lm_head(model.model.norm(hidden))[0, -1]
            tokens.append(int(logits.argmax()))
            generated.append(tokens[-1])
    return generated


@pytest.fixture
def max_live_blocks(monkeypatch):
    """The most blocks any request held for real at once, across the run."""
    seen = {"max": 0}
    original = KVCacheManager.drop_blocks

    def watching(self, request, first_live_position, num_kept_blocks):
        dropped = original(self, request, first_live_position, num_kept_blocks)
        seen["max"] = max(seen["max"], self.num_live_blocks(request.request_id))
        return dropped

    monkeypatch.setattr(KVCacheManager, "drop_blocks", watching)
    return seen


@pytest.mark.parametrize(
    "prompt_len, options, decode_kernel",
    [
        (20, dict(max_num_batched_tokens=16), True),
        # A prompt longer than N + W: its later tokens already attend with the sink rule.
        (50, dict(max_num_batched_tokens=12), True),
        # Decode rows through sink_attention instead of the CPU kernel (the CUDA path's way).
        (20, dict(max_num_batched_tokens=16), False),
    ],
    ids=["short-prompt", "prompt-past-the-span", "no-decode-kernel"],
)
def test_generation_runs_to_4x_the_context_as_the_paper_rules(
    llama_path, max_live_blocks, prompt_len, options, decode_kernel, monkeypatch
):
    if not decode_kernel:
        monkeypatch.setattr(attention, "cpu_kernels", lambda: None)
    rng = random.Random(prompt_len)
    prompt = [rng.randrange(3, 500) for _ in range(prompt_len)]
    num_new = 4 * CONTEXT - prompt_len
    expected = streaming_reference(hf_model(llama_path), prompt, num_new)
    # 16 blocks of 4: 64 slots for a 256-token sequence.
    llm = LLM(
        model=str(llama_path),
        device=TEST_DEVICE,
        dtype="float32",
        kv_window_policy=POLICY,
        max_model_len=4 * CONTEXT,
        num_blocks=16,
        block_size=4,
        **options,
    )
    params = SamplingParams(temperature=0, max_tokens=num_new, ignore_eos=True)
    [output] = llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)
    assert output.outputs[0].token_ids == expected
    # sinks (1 block) + window (7) + one chunk (at most 4) + one partly dead block
    assert 0 < max_live_blocks["max"] <= 1 + 7 + 4 + 1
    kv = llm.engine.kv_manager
    kv.check_integrity()
    assert kv.num_free_blocks == kv.num_blocks


def test_several_streams_at_once_match_one_at_a_time(llama_path):
    rng = random.Random(9)
    prompts = [[rng.randrange(3, 500) for _ in range(n)] for n in (3, 30, 45)]
    params = SamplingParams(temperature=0, max_tokens=120, ignore_eos=True)
    common = dict(
        model=str(llama_path),
        device=TEST_DEVICE,
        dtype="float32",
        kv_window_policy=POLICY,
        max_model_len=4 * CONTEXT,
        block_size=4,
    )
    alone = [
        LLM(**common, num_blocks=64).generate([{"prompt_token_ids": p}], params, use_tqdm=False)
        for p in prompts
    ]
    llm = LLM(**common, num_blocks=40, max_num_batched_tokens=16)
    together = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    for solo, batched in zip(alone, together, strict=True):
        assert batched.outputs[0].token_ids == solo[0].outputs[0].token_ids


def test_refusals_name_the_limit(llama_path):
    with pytest.raises(ValueError, match="exceed the model's context length"):
        LLM(model=str(llama_path), device=TEST_DEVICE, kv_window_policy="sink:4,window:64")
    with pytest.raises(ValueError, match="max_model_len 256 exceeds"):
        LLM(model=str(llama_path), device=TEST_DEVICE, max_model_len=256)
    with pytest.raises(ValueError, match="cannot be combined with --speculative-method"):
        LLM(
            model=str(llama_path),
            device=TEST_DEVICE,
            kv_window_policy=POLICY,
            speculative_method="ngram",
            num_speculative_tokens=2,
        )
