"""The C++ layer loop (corral/model/layer_loop.py): decode steps through it give bit-for-bit the
outputs of the per-layer Python path, in float32 and bfloat16, with biases, tied heads and int8
weights;
models and steps it does not cover take the Python path."""

from __future__ import annotations

import random

import pytest

from corral import LLM, SamplingParams
from corral.model.kernels import cpu_kernels

pytestmark = pytest.mark.skipif(cpu_kernels() is None, reason="the CPU kernels did not build here")


def _run(path, loop: bool, dtype: str, **kwargs):
    llm = LLM(model=str(path), dtype=dtype, num_blocks=128, block_size=16, **kwargs)
    model = llm.engine.executor.model
    model.use_layer_loop = loop
    rng = random.Random(2)
    prompts = [[rng.randrange(3, 500) for _ in range(n)] for n in (1, 6, 30, 70)]
    params = [
        SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=2),
        SamplingParams(temperature=0.8, seed=5, max_tokens=12, ignore_eos=True, logprobs=2),
    ]
    outputs = llm.generate(
        [{"prompt_token_ids": p} for p in prompts],
        [params[i % 2] for i in range(len(prompts))],
        use_tqdm=False,
    )
    return [(o.outputs[0].token_ids, o.outputs[0].logprobs) for o in outputs], model


@pytest.mark.parametrize("family", ["llama", "qwen2"])  # untied head; qkv biases, tied head
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("quantization", [None, "int8"])
def test_the_loop_gives_the_python_paths_outputs_exactly(
    tiny_model_factory, family, dtype, quantization
):
    path = tiny_model_factory(family)
    with_loop, model = _run(path, True, dtype, quantization=quantization)
    assert model._loop_weights  # the decode steps went through it
    without, other = _run(path, False, dtype, quantization=quantization)
    assert other._loop_weights is None  # never consulted
    assert with_loop == without


def test_models_it_does_not_cover_take_the_python_path(tiny_model_factory):
    path = tiny_model_factory("llama")
    _, model = _run(path, True, "float32", kv_cache_dtype="int8")
    assert model._loop_weights is None  # quantized KV: the step is refused before the model
    _, model = _run(tiny_model_factory("mistral"), True, "float32")
    assert model._loop_weights is None  # a sliding window: every step refused
