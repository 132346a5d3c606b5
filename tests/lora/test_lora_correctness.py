"""Tier 3 with LoRA: a batch mixing three adapters and the base model gives transformers + peft's
greedy tokens for every request (fp32), with chunked prefill, preemption and slot evictions."""

from __future__ import annotations

import random

import pytest
import torch

from corral import LLM, SamplingParams
from corral.lora.adapter import LoRARequest
from tests.lora.adapters import ADAPTERS, build_adapter, peft_greedy

pytestmark = pytest.mark.slow

MAX_TOKENS = 10
_LENGTHS = [3, 40, 17, 90, 5, 33, 64, 9]


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def setup(request, tiny_model_factory, tmp_path_factory):
    """(base dir, adapter dirs by name, prompts with their adapter, oracle outputs)."""
    base = tiny_model_factory(request.param)
    root = tmp_path_factory.mktemp(f"adapters-{request.param}")
    adapters = {
        name: build_adapter(base, root / name, seed=index, **options)
        for index, (name, options) in enumerate(ADAPTERS.items())
    }
    rng = random.Random(7)
    names = [None, *adapters]
    cases = [
        ([rng.randrange(3, 500) for _ in range(length)], names[index % len(names)])
        for index, length in enumerate(_LENGTHS)
    ]
    oracle = [
        peft_greedy(base, adapters[name] if name else None, prompt, MAX_TOKENS)
        for prompt, name in cases
    ]
    return base, adapters, cases, oracle


def _generate(llm: LLM, adapters, cases, logprobs=None):
    params = SamplingParams(
        temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True, logprobs=logprobs
    )
    loras = [LoRARequest(name, str(adapters[name])) if name else None for _, name in cases]
    prompts = [{"prompt_token_ids": prompt} for prompt, _ in cases]
    return llm.generate(prompts, params, use_tqdm=False, lora_request=loras)


def test_mixed_batch_matches_peft_with_close_logprobs(setup):
    base, adapters, cases, oracle = setup
    llm = LLM(model=str(base), dtype="float32", num_blocks=256, enable_lora=True, max_loras=3)
    outputs = _generate(llm, adapters, cases, logprobs=0)
    for (prompt, name), output, (tokens, logprobs) in zip(cases, outputs, oracle):
        completion = output.outputs[0]
        assert completion.token_ids == tokens, f"adapter {name}, prompt of {len(prompt)} tokens"
        ours = torch.tensor([next(iter(p.values())).logprob for p in completion.logprobs])
        theirs = logprobs[torch.arange(len(tokens)), torch.tensor(tokens)]
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    # The adapters matter: each changes the base model's continuation of the same prompt.
    prompt = cases[1][0]
    base_tokens = peft_greedy(base, None, prompt, MAX_TOKENS)[0]
    for name, directory in adapters.items():
        assert peft_greedy(base, directory, prompt, MAX_TOKENS)[0] != base_tokens, name


@pytest.mark.parametrize(
    "options",
    [
        dict(max_num_batched_tokens=32),  # chunked prefill
        dict(num_blocks=40, block_size=4),  # preemption by recompute
        dict(max_loras=1, max_cpu_loras=1),  # one slot: adapters take turns, reloaded from disk
        dict(max_loras=2, max_num_seqs=3, max_num_lora_bypasses=0),
    ],
    ids=["chunked", "preemption", "one-slot", "two-slots-no-bypass"],
)
def test_mixed_batch_identical_under_pressure(setup, options):
    base, adapters, cases, oracle = setup
    llm = LLM(
        model=str(base),
        dtype="float32",
        enable_lora=True,
        debug_check_integrity=True,
        **{"num_blocks": 256, "max_loras": 3, **options},
    )
    outputs = _generate(llm, adapters, cases)
    for (prompt, name), output, (tokens, _) in zip(cases, outputs, oracle):
        assert output.outputs[0].token_ids == tokens, f"adapter {name}, prompt of {len(prompt)}"
    scheduler = llm.engine.scheduler
    if options.get("num_blocks") == 40:
        assert scheduler.num_preemptions > 0
    stats = scheduler.stats().lora
    assert stats.num_loads >= len(adapters)
    if options.get("max_loras") == 1:
        # Requests of the resident adapter go ahead of the others: each adapter loads once.
        assert stats.num_loads == stats.num_disk_loads == len(adapters)
        assert stats.num_slot_evictions == stats.num_host_evictions == len(adapters) - 1
    scheduler.adapters.residency.check_integrity()
    assert scheduler.adapters.residency.num_in_use == 0
    assert llm.engine.kv_manager.num_free_blocks == llm.engine.kv_manager.num_blocks


def test_pytorch_path_and_bf16(setup, monkeypatch):
    """Without the C++ kernels (the path CUDA takes) the tokens are the same. In bfloat16 the
    adapters apply too: every adapter request's tokens differ from the same prompt's on the base
    model (the delta's bf16 arithmetic is checked against PyTorch in test_lora_kernel.py)."""
    from corral.lora import apply

    base, adapters, cases, oracle = setup
    llm = LLM(model=str(base), dtype="bfloat16", enable_lora=True, max_loras=3)
    with_adapters = _generate(llm, adapters, cases)
    on_base = _generate(llm, adapters, [(prompt, None) for prompt, _ in cases])
    for (prompt, name), ours, plain in zip(cases, with_adapters, on_base):
        same = ours.outputs[0].token_ids == plain.outputs[0].token_ids
        assert same == (name is None), f"adapter {name}, prompt of {len(prompt)}"
    monkeypatch.setattr(apply, "cpu_kernels", lambda: None)
    llm = LLM(model=str(base), dtype="float32", enable_lora=True, max_loras=2)
    outputs = _generate(llm, adapters, cases)
    for (prompt, name), output, (tokens, _) in zip(cases, outputs, oracle):
        assert output.outputs[0].token_ids == tokens, f"adapter {name}, prompt of {len(prompt)}"


def test_unloading_under_traffic_lets_admitted_requests_finish(setup):
    """Requests admitted before their adapter is unloaded finish on its weights; new requests
    naming it are refused; a reload with the same name and new weights gives new outputs."""
    base, adapters, cases, oracle = setup
    llm = LLM(model=str(base), dtype="float32", enable_lora=True, max_loras=2)
    engine = llm.engine
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    name = "all-r8"
    engine.input_processor.adapters.add(name, adapters[name])
    index = next(i for i, (_, n) in enumerate(cases) if n == name)
    prompt = cases[index][0]
    engine.add_request("before", {"prompt_token_ids": prompt}, params, lora_request=name)
    engine.step()  # admitted and prefilled
    engine.input_processor.adapters.remove(name)
    with pytest.raises(ValueError, match="no LoRA adapter named 'all-r8'"):
        engine.add_request("after", {"prompt_token_ids": prompt}, params, lora_request=name)
    finished = {}
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.finished:
                finished[output.request_id] = output.outputs[0].token_ids
    assert finished == {"before": oracle[index][0]}
    assert engine.scheduler.adapters.residency.num_in_use == 0
    # Same name, other weights (another adapter's directory): a new identity, new tokens.
    other = adapters["qv-r4-rslora"]
    engine.input_processor.adapters.add(name, other)
    (output,) = llm.generate(
        [{"prompt_token_ids": prompt}], params, lora_request=name, use_tqdm=False
    )
    expected = peft_greedy(base, other, prompt, MAX_TOKENS)[0]
    assert output.outputs[0].token_ids == expected != oracle[index][0]
