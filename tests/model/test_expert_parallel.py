"""Expert parallelism (--enable-expert-parallel) and plain tensor parallelism of MoE models:
tiny random fp32 Mixtral (5 experts: 3 + 2 over 2 ranks), Qwen2-MoE (shared expert) and
Qwen3-MoE (a dense layer among the sparse ones) greedy token-identical to transformers over 2
processes, with chunked prefill too; per-expert token counts (the /metrics source) equal to one
process's; the ranks' partial blocks summing to the whole block; clear refusals."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
import torch

from corral import LLM
from corral.engine.engine_args import add_engine_arguments, engine_config_from_args
from corral.model.arch import ModelArch
from corral.model.loader import load_model
from corral.model.tensor_parallel import check_shardable, load_shard
from tests.model.oracle import assert_greedy_matches, hf_greedy
from tests.model.test_correctness import MAX_TOKENS, corral_greedy, mixed_prompts
from tests.model.test_moe_models import SHAPE, _perturb_vectors

EXPERTS = dict(num_experts_per_tok=2, moe_intermediate_size=32)
# name -> (transformers model_type, config overrides)
FAMILIES = {
    "mixtral-5": ("mixtral", dict(num_local_experts=5, num_experts_per_tok=2)),
    "qwen2_moe": (
        "qwen2_moe",
        dict(num_experts=6, shared_expert_intermediate_size=48, norm_topk_prob=False, **EXPERTS),
    ),
    "qwen3_moe": (
        "qwen3_moe",
        dict(
            num_experts=7,
            norm_topk_prob=True,
            num_hidden_layers=3,
            mlp_only_layers=[1],
            attention_bias=True,
            **EXPERTS,
        ),
    ),
}


@pytest.fixture(scope="module")
def moe_models(tmp_path_factory, tokenizer_dir) -> dict:
    """name -> (model dir, prompts, transformers' greedy outputs, one process's expert load)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    built = {}
    for name, (model_type, overrides) in FAMILIES.items():
        path = tmp_path_factory.mktemp(f"ep-{name}")
        config = AutoConfig.for_model(
            model_type,
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **{**SHAPE, **overrides},
        )
        torch.manual_seed(2024)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        _perturb_vectors(model, seed=7)
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        prompts = mixed_prompts(len(tokenizer), seed=11)[:6]
        oracle = [hf_greedy(path, prompt, MAX_TOKENS) for prompt in prompts]
        llm = LLM(str(path), dtype="float32", num_blocks=128)
        corral_greedy(llm, prompts)
        load = llm.engine.core.stats().expert_tokens
        llm.shutdown()
        built[name] = (path, prompts, oracle, load)
    return built


def _run(path, prompts, **options):
    llm = LLM(str(path), dtype="float32", num_blocks=128, tensor_parallel_size=2, **options)
    try:
        outputs = corral_greedy(llm, prompts, logprobs=0)
        return outputs, llm.engine.core.stats().expert_tokens
    finally:
        llm.shutdown()


@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize(
    "options",
    [
        dict(enable_expert_parallel=True),
        dict(enable_expert_parallel=True, max_num_batched_tokens=24),  # chunked prefill
        dict(),  # plain tensor parallelism: every expert split by intermediate columns
    ],
    ids=["expert-parallel", "expert-parallel-chunked", "tensor-parallel"],
)
def test_two_ranks_match_transformers_and_count_the_same_load(name, options, moe_models):
    path, prompts, oracle, one_process_load = moe_models[name]
    outputs, load = _run(path, prompts, **options)
    assert_greedy_matches(name, prompts, outputs, oracle)
    if "max_num_batched_tokens" not in options:  # the same steps: the same tokens routed
        assert load == one_process_load
    assert {sum(c) for c in load.values()} == {sum(c) for c in one_process_load.values()}
    assert all(sum(c > 0 for c in counts) > 2 for counts in load.values())


@pytest.mark.parametrize("name", ["mixtral-5", "qwen2_moe"])
@pytest.mark.parametrize("expert_parallel", [True, False])
def test_rank_blocks_sum_to_the_whole_block(name, expert_parallel, moe_models):
    """Without processes: each rank's shard of a MoE block (rank 0: experts 0-2 of 5, rank 1:
    3-4; or every expert's half columns) computes a part, hands it to one all-reduce, and the
    parts sum to the whole."""
    path = moe_models[name][0]
    arch = ModelArch.from_dir(path)
    cpu, fp32 = torch.device("cpu"), torch.float32
    whole = load_model(path, arch, fp32, cpu, 64).layers[0].moe
    ranks = [load_shard(path, arch, fp32, cpu, 64, rank, 2, expert_parallel) for rank in (0, 1)]
    blocks = [shard.layers[0].moe for shard in ranks]
    if expert_parallel:
        counts = [arch.num_experts - arch.num_experts // 2, arch.num_experts // 2]
        assert [block.gate_up.shape[0] for block in blocks] == counts
        assert torch.equal(blocks[1].down[0], whole.down[counts[0]])
    else:
        assert blocks[1].gate_up.shape[1] == whole.gate_up.shape[1] // 2
    hidden = torch.randn(13, arch.hidden_size, generator=torch.Generator().manual_seed(3))
    reduced: list[torch.Tensor] = []
    for block in blocks:  # a stand-in all-reduce that records what it is given
        block.all_reduce = lambda tensor: reduced.append(tensor.clone())
    parts = [block(hidden) for block in blocks]
    assert len(reduced) == 2  # one all-reduce per block call, of the whole partial output
    assert all(torch.equal(sent, part) for sent, part in zip(reduced, parts, strict=True))
    torch.testing.assert_close(parts[0] + parts[1], whole(hidden), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(parts[1], whole(hidden), atol=1e-3)  # neither rank does it all
    assert torch.equal(blocks[0].expert_counts, blocks[1].expert_counts)  # routing agrees


def test_expert_parallel_is_refused_without_ranks_or_experts(moe_models, tiny_model):
    with pytest.raises(ValueError, match="enable-expert-parallel.*tensor_parallel_size is 1"):
        LLM(str(moe_models["mixtral-5"][0]), dtype="float32", enable_expert_parallel=True)
    with pytest.raises(
        ValueError, match="enable-expert-parallel: LlamaForCausalLM is a dense model"
    ):
        LLM(
            str(tiny_model),
            dtype="float32",
            tensor_parallel_size=2,
            enable_expert_parallel=True,
            num_blocks=16,
        )
    arch = ModelArch.from_dir(moe_models["mixtral-5"][0])
    with pytest.raises(ValueError, match="whole experts, and the model has 5 .* at most 5"):
        check_shardable(dataclasses.replace(arch, num_kv_heads=8, num_heads=8), 6, True)
    narrow = dataclasses.replace(arch, moe_intermediate_size=1)
    with pytest.raises(ValueError, match="1 intermediate columns .* --enable-expert-parallel"):
        check_shardable(narrow, 2)
    check_shardable(narrow, 2, expert_parallel=True)  # whole experts: any width


def test_the_flag_parses():
    parser = argparse.ArgumentParser()
    add_engine_arguments(parser)
    assert not engine_config_from_args(parser.parse_args([])).model.enable_expert_parallel
    flags = ["--tensor-parallel-size", "2", "--enable-expert-parallel"]
    config = engine_config_from_args(parser.parse_args(flags))
    assert config.model.enable_expert_parallel and config.model.tensor_parallel_size == 2
    with pytest.raises(ValueError, match="tensor_parallel_size is 1"):
        engine_config_from_args(parser.parse_args(["--enable-expert-parallel"]))
