"""Tier 3: YaRN and dynamic-NTK rope scaling against transformers.

Tiny random Llama and Qwen2 models whose original context is 32 positions, served with a longer
max_model_len, so that prompts and generations run past it; and the cos/sin tables alone against
transformers' rotary embedding, including dynamic NTK's rescaling as the sequence grows.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from corral import LLM
from corral.model.arch import ModelArch
from corral.model.layers.rotary import RotaryEmbedding
from tests.model.oracle import TEST_DEVICE, hf_model
from tests.model.test_correctness import corral_greedy

ORIGINAL = 32  # the context the rope scaling stretches
MAX_TOKENS = 24
MAX_MODEL_LEN = 128
SHAPE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    initializer_range=0.2,
)
YARN = dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=ORIGINAL)
# name -> (architecture, max_position_embeddings, rope parameters)
MODELS = {
    "llama-yarn": ("llama", 4 * ORIGINAL, YARN),
    "qwen2-yarn-untruncated": (
        "qwen2",
        4 * ORIGINAL,
        dict(YARN, beta_fast=16, beta_slow=2, truncate=False, attention_factor=1.3),
    ),
    "llama-dynamic": ("llama", ORIGINAL, dict(rope_type="dynamic", factor=5.0)),
    "qwen2-dynamic": ("qwen2", ORIGINAL, dict(rope_type="dynamic", factor=6.0)),
}


def _prompts(vocab_size: int, seed: int) -> list[list[int]]:
    """Prompts shorter than, equal to and longer than the original context (+ 24 new tokens)."""
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab_size) for _ in range(n)] for n in (1, 9, 20, 32, 33, 70, 100)]


@pytest.fixture(scope="module")
def rope_model(tmp_path_factory, tokenizer_dir):
    from transformers import AutoTokenizer

    from corral.demo.random_model import build_random_model

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    built: dict[str, Path] = {}

    def make(name: str) -> Path:
        if name not in built:
            architecture, max_positions, rope = MODELS[name]
            path = tmp_path_factory.mktemp(f"model-{name}")
            build_random_model(
                path,
                architecture=architecture,
                seed=77,
                tokenizer=tokenizer,
                max_position_embeddings=max_positions,
                rope_scaling=dict(rope),
                rope_theta=10000.0,
                **SHAPE,
            )
            built[name] = path
        return built[name]

    return make


def _reset_dynamic_state(model) -> None:
    """transformers' dynamic rope keeps the longest length it has seen across generate calls;
    start every oracle run from the model's initial frequencies."""
    rotary = model.model.rotary_emb
    rotary.register_buffer("inv_freq", rotary.original_inv_freq.clone(), persistent=False)
    rotary.max_seq_len_cached = rotary.original_max_seq_len


@torch.inference_mode()
def _hf_greedy(path: Path, prompt: list[int], max_tokens: int, chunk: int | None = None):
    """transformers' greedy tokens; with chunk, the prompt goes in chunk-token forward passes
    (as corral's chunked prefill feeds it), then one token per pass."""
    from transformers import DynamicCache

    model = hf_model(path)
    _reset_dynamic_state(model)
    if chunk is None:
        result = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=max_tokens,
            min_new_tokens=max_tokens,
            do_sample=False,
            pad_token_id=0,
        )
        return result[0, len(prompt) :].tolist()
    cache = DynamicCache(config=model.config)
    feed, tokens, position = list(prompt), [], 0
    while len(tokens) < max_tokens:
        step = feed[:chunk] if chunk else feed
        feed = feed[len(step) :]
        positions = torch.arange(position, position + len(step)).unsqueeze(0)
        logits = model(
            torch.tensor([step]), position_ids=positions, past_key_values=cache, use_cache=True
        ).logits
        position += len(step)
        if not feed:
            tokens.append(int(logits[0, -1].argmax()))
            feed = [tokens[-1]]
    return tokens


@pytest.mark.parametrize("name", sorted(MODELS))
def test_greedy_matches_transformers_past_the_original_context(rope_model, name):
    path = rope_model(name)
    arch = ModelArch.from_dir(path)
    assert arch.rope_scaling["rope_type"] == MODELS[name][2]["rope_type"]
    llm = LLM(
        device=TEST_DEVICE,
        model=str(path),
        dtype="float32",
        num_blocks=256,
        max_model_len=MAX_MODEL_LEN,
    )
    prompts = _prompts(arch.vocab_size, seed=len(name))
    outputs = corral_greedy(llm, prompts, max_tokens=MAX_TOKENS)
    for prompt, output in zip(prompts, outputs):
        expected = _hf_greedy(path, prompt, MAX_TOKENS)
        assert output.outputs[0].token_ids == expected, f"{name}: prompt of {len(prompt)}"
    rotary = llm.engine.executor.model.rotary
    if rotary.dynamic is not None:  # rescaled for every length past the original context
        assert max(rotary._dynamic_cache) == max(map(len, prompts)) + MAX_TOKENS - 1


@pytest.mark.parametrize("name", ["llama-yarn", "qwen2-dynamic"])
def test_chunked_prefill_matches_transformers_fed_the_same_chunks(rope_model, name):
    """YaRN is static, so chunking changes nothing; dynamic NTK rotates each chunk's keys with
    the length reached at the chunk's end, as transformers does when fed those chunks."""
    path = rope_model(name)
    llm = LLM(
        device=TEST_DEVICE,
        model=str(path),
        dtype="float32",
        num_blocks=256,
        max_model_len=MAX_MODEL_LEN,
        max_num_batched_tokens=16,
    )
    for prompt in _prompts(ModelArch.from_dir(path).vocab_size, seed=3)[3:]:
        (output,) = corral_greedy(llm, [prompt], max_tokens=MAX_TOKENS)
        expected = _hf_greedy(path, prompt, MAX_TOKENS, chunk=16)
        assert output.outputs[0].token_ids == expected, f"{name}: prompt of {len(prompt)}"
    llm.engine.kv_manager.check_integrity()


def test_dynamic_context_limit_and_refusal(rope_model):
    arch = ModelArch.from_dir(rope_model("llama-dynamic"))
    assert arch.max_context_len == 5 * ORIGINAL
    assert ModelArch.from_dir(rope_model("llama-yarn")).max_context_len == 4 * ORIGINAL
    with pytest.raises(ValueError, match="context length with its rope scaling"):
        LLM(model=str(rope_model("llama-dynamic")), max_model_len=5 * ORIGINAL + 1)


# ----- the tables alone ------------------------------------------------------------------------

HEAD_DIM = 32
TABLE_CASES = {
    "default": ({"rope_type": "default"}, 64),
    "linear": ({"rope_type": "linear", "factor": 2.5}, 64),
    "llama3": (
        dict(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=16,
        ),
        64,
    ),
    "yarn": (dict(YARN), 128),
    "yarn-untruncated": (dict(YARN, truncate=False, beta_fast=8, beta_slow=2), 128),
    "yarn-mscale": (dict(YARN, factor=8.0, mscale=0.707, mscale_all_dim=1.0), 256),
    "yarn-deepseek-no-factor": (dict(YARN, factor=None), 96),
    "yarn-attention-factor": (dict(YARN, attention_factor=0.8), 128),
}


def _hf_rotary(rope: dict, max_positions: int):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = LlamaConfig(
        hidden_size=HEAD_DIM * 2,
        num_attention_heads=2,
        max_position_embeddings=max_positions,
        rope_scaling={**rope, "rope_theta": 10000.0},
        rope_theta=10000.0,
    )
    arch = ModelArch.from_hf_config(config.to_dict())
    return LlamaRotaryEmbedding(config), arch


def _corral_rotary(arch: ModelArch, max_len: int) -> RotaryEmbedding:
    return RotaryEmbedding(
        arch.head_dim,
        max_len,
        arch.rope_theta,
        arch.rope_scaling,
        torch.float32,
        torch.device("cpu"),
        arch.max_position_embeddings,
    )


@pytest.mark.parametrize("case", sorted(TABLE_CASES))
@torch.inference_mode()
def test_static_tables_match_transformers(case):
    rope, max_positions = TABLE_CASES[case]
    theirs, arch = _hf_rotary(rope, max_positions)
    ours = _corral_rotary(arch, 300)
    positions = torch.arange(300)
    cos, sin = theirs(torch.zeros(1, dtype=torch.float32), positions.unsqueeze(0))
    table_cos, table_sin, rows = ours.step_tables(positions)
    torch.testing.assert_close(table_cos[rows], cos[0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(table_sin[rows], sin[0], atol=1e-6, rtol=1e-6)
    if case.startswith("yarn"):
        assert ours.attention_factor == pytest.approx(theirs.attention_scaling)
        assert ours.attention_factor != 1.0


@pytest.mark.parametrize("factor", [2.0, 3.0, 7.5])
@torch.inference_mode()
def test_dynamic_tables_follow_transformers_as_the_sequence_grows(factor):
    """A prompt prefilled in one pass, then decodes one position at a time: transformers
    rescales whenever the length passes its longest so far; corral's per-request lengths give
    the same tables (bit for bit in float32)."""
    theirs, arch = _hf_rotary({"rope_type": "dynamic", "factor": factor}, 24)
    ours = _corral_rotary(arch, 200)
    x = torch.zeros(1, dtype=torch.float32)
    for prompt_len in (10, 24, 25, 60):
        theirs.register_buffer("inv_freq", theirs.original_inv_freq.clone(), persistent=False)
        theirs.max_seq_len_cached = theirs.original_max_seq_len
        positions = torch.arange(prompt_len)
        cos, sin = theirs(x, positions.unsqueeze(0))
        table_cos, table_sin, rows = ours.step_tables(positions, [(0, prompt_len)])
        assert torch.equal(table_cos[rows], cos[0]) and torch.equal(table_sin[rows], sin[0])
        for position in range(prompt_len, prompt_len + 40, 7):
            cos, sin = theirs(x, torch.tensor([[position]]))
            table_cos, table_sin, rows = ours.step_tables(torch.tensor([position]))
            assert torch.equal(table_cos[rows], cos[0]), (prompt_len, position)
            assert torch.equal(table_sin[rows], sin[0]), (prompt_len, position)


@torch.inference_mode()
def test_dynamic_step_mixes_requests_of_different_lengths():
    """One step holding a decode past the original context, a decode inside it, a prefill chunk
    and a token outside every range: each rotates with its own request's length at the step's
    end (a token of no range, with its own position + 1)."""
    _, arch = _hf_rotary({"rope_type": "dynamic", "factor": 4.0}, 16)
    ours = _corral_rotary(arch, 128)
    positions = torch.tensor([40, 5, 20, 21, 22, 23, 30])
    cos, _, rows = ours.step_tables(positions, [(0, 1), (1, 2), (2, 6)])
    assert torch.equal(rows, torch.arange(7))
    expected = [(40, 41), (5, 6)] + [(p, 24) for p in (20, 21, 22, 23)] + [(30, 31)]
    for row, (position, length) in enumerate(expected):
        angles = position * ours.dynamic_frequencies(length)
        torch.testing.assert_close(cos[row], torch.cat((angles, angles)).cos())
    # Nothing past the original context: the static table, indexed by position.
    table, _, rows = ours.step_tables(torch.tensor([3, 15]))
    assert table is ours.cos and rows.tolist() == [3, 15]
