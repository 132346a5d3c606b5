"""Tensor parallelism (--tensor-parallel-size): greedy output of tiny fp32 models with 2 ranks
identical to 1 rank token for token and logprobs within 1e-4, clear refusals, a killed worker
that makes the engine raise, and no worker left behind."""

from __future__ import annotations

import argparse
import dataclasses
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from corral import LLM, SamplingParams
from corral.demo.random_model import build_random_model
from corral.engine.engine_args import add_engine_arguments, engine_config_from_args
from corral.model.arch import ModelArch
from corral.model.tensor_parallel import ShardRule, check_shardable, local_arch, split
from tests.conftest import TINY_SHAPE, _load_tokenizer

PROMPTS = [
    "The quick brown fox",
    "Serving large language models efficiently needs batching, paging and careful scheduling "
    "of every request that arrives, long or short.",
    "How many apples",
    [5, 9, 13, 200, 17, 300, 21, 8, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 60],
]
GREEDY = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True, logprobs=5)


def _with_random_biases(source: Path, target: Path) -> Path:
    """A copy of the model at source whose biases (zeros from transformers' init) are random."""
    shutil.copytree(source, target)
    path = target / "model.safetensors"
    tensors = load_file(path)
    generator = torch.Generator().manual_seed(7)
    for name, tensor in tensors.items():
        if name.endswith(".bias"):
            tensors[name] = torch.randn(tensor.shape, generator=generator) * 0.2
    save_file(tensors, path, metadata={"format": "pt"})
    return target


@pytest.fixture(scope="module")
def biased_models(tmp_path_factory, tokenizer_dir, tiny_model_factory) -> dict[str, Path]:
    """Qwen2 (q/k/v biases) and Llama with attention_bias and mlp_bias (o and down biases
    too, which must be added once, after the all-reduce), every bias random."""
    root = tmp_path_factory.mktemp("tp-models")
    llama = root / "llama-bias-built"
    build_random_model(
        llama,
        architecture="llama",
        seed=99,
        dtype="float32",
        initializer_range=0.2,
        tokenizer=_load_tokenizer(tokenizer_dir),
        **{**TINY_SHAPE, "attention_bias": True, "mlp_bias": True},
    )
    uneven = root / "llama-uneven-built"
    shape = {**TINY_SHAPE, "hidden_size": 96, "intermediate_size": 149, "attention_bias": True}
    shape |= {"num_attention_heads": 6, "num_key_value_heads": 3}
    build_random_model(
        uneven,
        architecture="llama",
        seed=5,
        dtype="float32",
        initializer_range=0.2,
        tokenizer=_load_tokenizer(tokenizer_dir),
        **shape,
    )
    return {
        "llama-uneven": _with_random_biases(uneven, root / "llama-uneven"),
        "qwen2-bias": _with_random_biases(tiny_model_factory("qwen2"), root / "qwen2-bias"),
        "llama-bias": _with_random_biases(llama, root / "llama-bias"),
    }


def _run(model: Path, size: int, **kwargs) -> list:
    llm = LLM(str(model), dtype="float32", tensor_parallel_size=size, num_blocks=96, **kwargs)
    try:
        return llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    finally:
        llm.shutdown()


def _assert_same(reference: list, outputs: list) -> None:
    for expected, got in zip(reference, outputs, strict=True):
        assert got.outputs[0].token_ids == expected.outputs[0].token_ids
        for want, have in zip(expected.outputs[0].logprobs, got.outputs[0].logprobs, strict=True):
            for token_id, logprob in want.items():
                assert have[token_id].logprob == pytest.approx(logprob.logprob, abs=1e-4)


@pytest.mark.parametrize(
    "name, size",
    [("llama", 2), ("qwen2-bias", 2), ("llama-bias", 2), ("llama-uneven", 2), ("llama-uneven", 3)],
)
def test_ranks_match_one_token_for_token(name, size, tiny_model, biased_models):
    """Llama, Qwen2 with q/k/v biases, Llama with o and down biases too, and 6 query / 3 KV
    heads with an odd MLP width over 2 ranks (uneven) and 3."""
    model = tiny_model if name == "llama" else biased_models[name]
    # Small chunks: prefills that continue from cached context, and mixed steps.
    reference = _run(model, 1, max_num_batched_tokens=20)
    _assert_same(reference, _run(model, size, max_num_batched_tokens=20))


def test_host_tier_swaps_run_on_every_rank(tiny_model):
    """Swap preemption on a pool too small for the batch: the host tier's saves and loads are
    mirrored to the worker (its KV heads come back as rank 0's do)."""
    options = dict(host_cache_memory="4MiB", preemption_mode="swap", block_size=4)
    llm = LLM(str(tiny_model), dtype="float32", num_blocks=24, **options)
    reference = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    assert llm.engine.scheduler.num_preemptions > 0
    llm.shutdown()
    llm = LLM(str(tiny_model), dtype="float32", num_blocks=24, tensor_parallel_size=2, **options)
    try:
        _assert_same(reference, llm.generate(PROMPTS, GREEDY, use_tqdm=False))
    finally:
        llm.shutdown()


def test_shards_split_heads_and_mlp_and_keep_one_bias():
    arch = ModelArch("llama", 512, 64, 128, 2, 4, 2, 16, 1024)
    assert dataclasses.astuple(local_arch(arch, 1, 2))[3:8] == (64, 2, 2, 1, 16)
    rank0, rank1 = ShardRule(arch, 0, 2), ShardRule(arch, 1, 2)
    weight = torch.arange(64 * 64.0).view(64, 64)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(rank1(q, weight), weight[32:])
    assert torch.equal(rank1("model.layers.0.self_attn.k_proj.bias", weight[0]), weight[0, 16:32])
    o = "model.layers.1.self_attn.o_proj.weight"
    assert torch.equal(rank1(o, weight), weight[:, 32:]) and rank1(o, weight).is_contiguous()
    bias = torch.ones(64)
    assert torch.equal(rank0("model.layers.0.mlp.down_proj.bias", bias), bias)
    assert not rank1("model.layers.0.mlp.down_proj.bias", bias).any()
    assert rank1("model.embed_tokens.weight", weight) is weight


def test_uneven_splits_follow_kv_heads():
    """SmolLM-135M's 9 query and 3 KV heads over 2 ranks: 2 KV heads (6 query heads) and 1
    (3); an odd MLP width splits as n + 1 and n."""
    arch = ModelArch("llama", 512, 576, 1537, 2, 9, 3, 64, 1024)
    shapes = [dataclasses.astuple(local_arch(arch, rank, 2))[3:7] for rank in (0, 1)]
    assert shapes == [(769, 2, 6, 2), (768, 2, 3, 1)]
    assert split(1537, 2, 1) == (769, 768)
    q = torch.zeros(9 * 64, 576)
    assert ShardRule(arch, 1, 2)("model.layers.0.self_attn.q_proj.weight", q).shape == (192, 576)


def test_uneven_heads_and_too_narrow_experts_are_refused(tiny_model):
    """(MoE models over ranks: tests/model/test_expert_parallel.py.)"""
    with pytest.raises(ValueError, match="num_key_value_heads 2 .* a KV head"):
        LLM(str(tiny_model), dtype="float32", tensor_parallel_size=3, num_blocks=16)
    moe = ModelArch(
        "MixtralForCausalLM", 512, 64, 128, 2, 4, 2, 16, 1024, num_experts=8,
        num_experts_per_tok=2, moe_intermediate_size=1,
    )  # fmt: skip
    with pytest.raises(ValueError, match="1 intermediate columns .* --enable-expert-parallel"):
        check_shardable(moe, 2)
    check_shardable(moe, 2, expert_parallel=True)


def test_a_killed_worker_makes_the_engine_raise(tiny_model):
    llm = LLM(str(tiny_model), dtype="float32", tensor_parallel_size=2, num_blocks=32)
    group = llm.engine.executor.model.group
    try:
        llm.generate(PROMPTS[:1], GREEDY, use_tqdm=False)
        worker = group.workers[0]
        worker.kill()
        worker.wait(timeout=10)
        with pytest.raises(RuntimeError, match="worker rank 1 .* exited with code -9"):
            llm.generate(PROMPTS[:1], GREEDY, use_tqdm=False)
    finally:
        llm.shutdown()
    assert all(worker.poll() is not None for worker in group.workers)


def test_shutdown_leaves_no_worker_and_a_new_engine_starts(tiny_model):
    llm = LLM(str(tiny_model), dtype="float32", tensor_parallel_size=2, num_blocks=32)
    workers = list(llm.engine.executor.model.group.workers)
    llm.shutdown()
    assert workers and all(worker.poll() == 0 for worker in workers)
    assert not torch.distributed.is_initialized()
    llm = LLM(str(tiny_model), dtype="float32", tensor_parallel_size=2, num_blocks=32)
    llm.shutdown()


def _args(*flags: str) -> argparse.Namespace:
    from corral.serve.cli import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(flags))


def test_the_flag_parses_and_serve_refuses_unsupported_combinations(capsys):
    parser = argparse.ArgumentParser()
    add_engine_arguments(parser)
    assert engine_config_from_args(parser.parse_args([])).model.tensor_parallel_size == 1
    config = engine_config_from_args(parser.parse_args(["--tensor-parallel-size", "2"]))
    assert config.model.tensor_parallel_size == 2
    from corral.serve.cli import run

    for flags in (
        ["--enable-lora"],
        ["--speculative-method", "ngram"],
        ["--host-cache-memory", "1MiB", "--disk-cache-dir", "/tmp/nowhere"],
        ["--kv-role", "prefill"],
    ):
        assert run(_args("--tensor-parallel-size", "2", *flags)) == 2
        error = capsys.readouterr().err
        assert "--tensor-parallel-size 2 with" in error and "not supported yet" in error
    assert run(_args("--tensor-parallel-size", "0")) == 2
    assert "tensor_parallel_size must be >= 1" in capsys.readouterr().err
