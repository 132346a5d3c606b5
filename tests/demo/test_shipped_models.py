"""The shipped demo models load in transformers and in corral, and both give the same greedy
tokens (float32); the default model is the trained one, and it stops at <|end|>."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from corral.demo.report import RECOMMENDED_SAMPLING

QUESTIONS = [
    "Sam has 4 bags with 6 marbles in each bag. He gives 5 marbles to his sister. "
    "How many marbles does Sam have now?",
    "A bakery sells muffins for $3 each. On Monday it sold 25 muffins and on Tuesday twice as "
    "many. How much money did it make?",
    "Lena reads 15 pages a day. Her book has 240 pages. How many days will she need?",
]
NUM_TOKENS = 48


def _chat_prompt_ids(model_dir: Path, question: str) -> list[int]:
    from corral.engine.tokenizer import Tokenizer

    return Tokenizer(model_dir).encode_chat([{"role": "user", "content": question}])


def _hf_greedy(
    model_dir: Path, prompts: list[list[int]], repetition_penalty: float
) -> list[list[int]]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    outputs = []
    with torch.inference_mode():
        for prompt in prompts:
            result = model.generate(
                torch.tensor([prompt]),
                max_new_tokens=NUM_TOKENS,
                min_new_tokens=NUM_TOKENS,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
                repetition_penalty=repetition_penalty,
            )
            outputs.append(result[0, len(prompt) :].tolist())
    return outputs


def test_weights_are_bf16_safetensors(shipped_dir: Path) -> None:
    from safetensors import safe_open

    with safe_open(shipped_dir / "model.safetensors", framework="pt") as weights:
        dtypes = {weights.get_slice(name).get_dtype() for name in weights.keys()}  # noqa: SIM118
    assert dtypes == {"BF16"}


@pytest.mark.parametrize("repetition_penalty", [1.0, RECOMMENDED_SAMPLING["repetition_penalty"]])
def test_corral_matches_transformers_token_for_token(
    shipped_dir: Path, repetition_penalty: float
) -> None:
    from corral import LLM, SamplingParams

    prompts = [_chat_prompt_ids(shipped_dir, question) for question in QUESTIONS]
    expected = _hf_greedy(shipped_dir, prompts, repetition_penalty)
    llm = LLM(model=str(shipped_dir), dtype="float32", num_blocks=64)
    params = SamplingParams(
        temperature=0,
        max_tokens=NUM_TOKENS,
        ignore_eos=True,
        repetition_penalty=repetition_penalty,
    )
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    assert [list(output.outputs[0].token_ids) for output in outputs] == expected
    # the models are trained: greedy output is not one token over and over
    assert all(len(set(tokens)) > 5 for tokens in expected)


def test_generation_config_recommends_the_tested_settings(shipped_dir: Path) -> None:
    from transformers import GenerationConfig

    config = GenerationConfig.from_pretrained(shipped_dir)
    for key, value in RECOMMENDED_SAMPLING.items():
        assert getattr(config, key) == value
    assert not config.do_sample


def test_default_model_is_the_trained_demo(target_dir: Path) -> None:
    from corral.model.resolve import default_model_dir, resolve_model_dir

    assert default_model_dir() == target_dir
    assert resolve_model_dir(None) == target_dir
    assert resolve_model_dir("corral-demo-draft") == target_dir.parent / "corral-demo-draft"


def test_chat_reply_stops_at_end_token(target_dir: Path) -> None:
    from corral import LLM, SamplingParams

    llm = LLM(dtype="float32", num_blocks=64)  # no model: the bundled default
    [output] = llm.chat(
        [{"role": "user", "content": QUESTIONS[0]}],
        SamplingParams(temperature=0, max_tokens=300, **RECOMMENDED_SAMPLING),
        use_tqdm=False,
    )
    completion = output.outputs[0]
    assert completion.finish_reason == "stop"
    assert completion.token_ids[-1] == llm.get_tokenizer().eos_token_id
    assert "<|" not in completion.text and completion.text.strip()


def test_draft_shares_the_tokenizer_and_is_several_times_smaller(target_dir, draft_dir) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert (target_dir / "tokenizer.json").read_bytes() == (
        draft_dir / "tokenizer.json"
    ).read_bytes()
    sizes = {}
    for path in (target_dir, draft_dir):
        model = AutoModelForCausalLM.from_pretrained(path)
        sizes[path] = sum(p.numel() for p in model.parameters())
        assert AutoTokenizer.from_pretrained(path).eos_token == "<|end|>"
    assert 1e6 < sizes[target_dir] < 2e7
    assert sizes[target_dir] >= 3 * sizes[draft_dir]
