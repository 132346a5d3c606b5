"""transformers as the oracle: greedy continuations and their per-step logits."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import torch

# Tier-3 tests run corral on this device (the oracle always runs on CPU in float32 or bf16):
# CORRAL_TEST_DEVICE=cuda checks the CUDA path against the same oracle.
TEST_DEVICE = os.environ.get("CORRAL_TEST_DEVICE", "cpu")


@lru_cache(maxsize=8)
def hf_model(path: Path, dtype: str = "float32"):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    model.eval()
    model.generation_config.eos_token_id = None
    return model


@torch.inference_mode()
def hf_greedy(path: Path, prompt: list[int], max_tokens: int, dtype: str = "float32"):
    """(token ids, log-softmax rows [max_tokens, vocab]) of transformers' greedy generate."""
    return hf_model_greedy(hf_model(path, dtype), prompt, max_tokens)


@torch.inference_mode()
def hf_model_greedy(model, prompt: list[int], max_tokens: int):
    """hf_greedy for a transformers model already built (and perhaps altered) by the caller."""
    result = model.generate(
        torch.tensor([prompt]),
        max_new_tokens=max_tokens,
        min_new_tokens=max_tokens,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
        output_logits=True,
        return_dict_in_generate=True,
    )
    tokens = result.sequences[0, len(prompt) :].tolist()
    logprobs = torch.log_softmax(torch.cat(result.logits).float(), dim=-1)
    return tokens, logprobs


@torch.inference_mode()
def hf_prompt_logprobs(path: Path, prompt: list[int]) -> torch.Tensor:
    """log-softmax of the logits at every prompt position [len(prompt), vocab]."""
    logits = hf_model(path)(torch.tensor([prompt])).logits[0]
    return torch.log_softmax(logits.float(), dim=-1)


def assert_greedy_matches(name: str, prompts, outputs, oracle, atol: float = 1e-4) -> None:  # noqa: ANN001
    """corral's greedy outputs (with logprobs=0) against hf_greedy's (tokens, logprobs) per
    prompt: the same tokens, and the chosen tokens' logprobs within atol."""
    for prompt, output, (tokens, logprobs) in zip(prompts, outputs, oracle, strict=True):
        completion = output.outputs[0]
        assert completion.token_ids == tokens, f"{name}: prompt of {len(prompt)} tokens"
        ours = torch.tensor([next(iter(p.values())).logprob for p in completion.logprobs])
        theirs = logprobs[torch.arange(len(tokens)), torch.tensor(tokens)]
        torch.testing.assert_close(ours, theirs, atol=atol, rtol=0)
