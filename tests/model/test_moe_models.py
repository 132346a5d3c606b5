"""Tier 3: mixture-of-experts models (Mixtral, Qwen2-MoE, Qwen3-MoE) and Qwen3 dense (q/k norm)
against transformers, on tiny random-weight models with 8 experts and top-2 routing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from corral import LLM
from corral.model.arch import ModelArch
from corral.model.layers.moe import SparseMoE
from tests.model.oracle import TEST_DEVICE, assert_greedy_matches, hf_greedy, hf_model
from tests.model.test_correctness import MAX_TOKENS, corral_greedy, mixed_prompts

SHAPE = dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    initializer_range=0.2,
)
EXPERTS = dict(num_experts_per_tok=2, moe_intermediate_size=32)
# name -> (transformers model_type, config overrides)
FAMILIES = {
    "mixtral": ("mixtral", dict(num_local_experts=8, num_experts_per_tok=2)),
    "qwen2_moe": (
        "qwen2_moe",
        dict(num_experts=8, shared_expert_intermediate_size=48, norm_topk_prob=False, **EXPERTS),
    ),
    "qwen3_moe": (
        "qwen3_moe",
        dict(
            num_experts=8,
            norm_topk_prob=True,
            num_hidden_layers=4,
            decoder_sparse_step=1,
            mlp_only_layers=[2],
            attention_bias=True,
            **EXPERTS,
        ),
    ),
    # qwen2-MoE with experts in every second layer only, and renormalised weights
    "qwen2_moe-sparse-step": (
        "qwen2_moe",
        dict(
            num_experts=8,
            shared_expert_intermediate_size=48,
            norm_topk_prob=True,
            num_hidden_layers=3,
            decoder_sparse_step=2,
            **EXPERTS,
        ),
    ),
    "qwen3": ("qwen3", dict(head_dim=32, attention_bias=True)),
}
MOE_TYPES = ("mixtral", "qwen2_moe", "qwen3_moe")


def _perturb_vectors(model: torch.nn.Module, seed: int) -> None:
    """transformers initialises biases to 0 and norm weights to 1: make them matter."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() != 1:
                continue
            noise = torch.randn(parameter.shape, generator=generator)
            if name.endswith("norm.weight"):
                parameter.copy_(1.0 + 0.3 * noise)
            else:
                parameter.copy_(0.2 * noise)


def _build(name: str, out_dir: Path, tokenizer) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM

    model_type, overrides = FAMILIES[name]
    config = AutoConfig.for_model(
        model_type,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **{**SHAPE, **overrides},
    )
    torch.manual_seed(4321)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    _perturb_vectors(model, seed=99)
    model.eval()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def moe_model_factory(tmp_path_factory, tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    built: dict[str, Path] = {}

    def make(name: str) -> Path:
        if name not in built:
            built[name] = _build(name, tmp_path_factory.mktemp(f"model-{name}"), tokenizer)
        return built[name]

    return make


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, moe_model_factory):
    """(name, model dir, prompts, oracle outputs) per family; oracle computed once."""
    path = moe_model_factory(request.param)
    vocab_size = ModelArch.from_dir(path).vocab_size
    prompts = mixed_prompts(vocab_size, seed=5)
    oracle = [hf_greedy(path, prompt, MAX_TOKENS) for prompt in prompts]
    return request.param, path, prompts, oracle


def test_architecture_and_parameter_count_match_transformers(family):
    name, path, _, _ = family
    arch = ModelArch.from_dir(path)
    model = hf_model(path)
    assert arch.num_params() == sum(p.numel() for p in model.parameters())
    moe_layers = [i for i, layer in enumerate(model.model.layers) if hasattr(layer.mlp, "gate")]
    assert [i for i in range(arch.num_layers) if arch.is_moe_layer(i)] == moe_layers
    if arch.is_moe:
        inactive = arch.num_moe_layers * (arch.num_experts - arch.num_experts_per_tok)
        assert arch.num_params() - arch.num_active_params() == inactive * arch.expert_params()
    else:
        assert arch.num_active_params() == arch.num_params()
    assert arch.qk_norm == name.startswith("qwen3")


def test_greedy_matches_transformers_with_close_logprobs(family):
    name, path, prompts, oracle = family
    llm = LLM(device=TEST_DEVICE, model=str(path), dtype="float32", num_blocks=256)
    outputs = corral_greedy(llm, prompts, logprobs=0)
    assert_greedy_matches(name, prompts, outputs, oracle)
    load = llm.engine.executor.model.expert_load()
    arch = llm.engine.executor.model.arch
    assert sorted(load) == [i for i in range(arch.num_layers) if arch.is_moe_layer(i)]
    totals = {sum(counts) for counts in load.values()}
    assert len(totals) <= 1  # every MoE layer routes the same tokens
    if load:
        assert totals.pop() % arch.num_experts_per_tok == 0
        assert all(
            sum(c > 0 for c in counts) > arch.num_experts_per_tok for counts in load.values()
        )


@pytest.mark.parametrize(
    "options",
    [
        dict(max_num_batched_tokens=32),  # chunked prefill
        dict(num_blocks=80, block_size=4),  # too few blocks: preemption by recompute
    ],
    ids=["chunked", "preemption"],
)
def test_greedy_identical_under_scheduling_pressure(family, options):
    name, path, prompts, oracle = family
    llm = LLM(
        device=TEST_DEVICE, model=str(path), dtype="float32", **{"num_blocks": 256, **options}
    )
    outputs = corral_greedy(llm, prompts)
    for prompt, output, (tokens, _) in zip(prompts, outputs, oracle):
        assert output.outputs[0].token_ids == tokens, f"{name}: prompt of {len(prompt)} tokens"
    if options.get("num_blocks") == 80:
        assert llm.engine.scheduler.num_preemptions > 0
    llm.engine.kv_manager.check_integrity()


def test_greedy_identical_without_cpu_kernels(moe_model_factory, monkeypatch):
    """The PyTorch fallback path (q/k norm and experts outside the fused decode path)."""
    from corral.model.layers import attention, linear
    from corral.model.models import llama

    for module in (attention, linear, llama):
        monkeypatch.setattr(module, "cpu_kernels", lambda: None)
    for name in ("qwen3", "qwen3_moe"):
        path = moe_model_factory(name)
        prompts = mixed_prompts(ModelArch.from_dir(path).vocab_size, seed=5)[:5]
        llm = LLM(device=TEST_DEVICE, model=str(path), dtype="float32", num_blocks=64)
        for prompt, output in zip(prompts, corral_greedy(llm, prompts)):
            assert output.outputs[0].token_ids == hf_greedy(path, prompt, MAX_TOKENS)[0], name


# ----- the MoE block alone against transformers' --------------------------------------------


def _hf_block(model_type: str, **overrides):
    from transformers import AutoConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock
    from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

    blocks = {
        "mixtral": MixtralSparseMoeBlock,
        "qwen2_moe": Qwen2MoeSparseMoeBlock,
        "qwen3_moe": Qwen3MoeSparseMoeBlock,
    }
    config = AutoConfig.for_model(model_type, **{**SHAPE, **FAMILIES[model_type][1], **overrides})
    torch.manual_seed(7)
    block = blocks[model_type](config).eval()
    with torch.no_grad():
        for parameter in block.parameters():
            parameter.normal_(0.0, 0.2)
    return block, ModelArch.from_hf_config(config.to_dict())


def _corral_block(arch: ModelArch, named_tensors) -> SparseMoE:
    moe = SparseMoE(
        arch.num_experts,
        arch.num_experts_per_tok,
        arch.norm_topk_prob,
        arch.shared_expert_intermediate_size > 0,
    )
    for name, tensor in named_tensors:
        assert moe.load(name, tensor), name
    assert moe.finish_loading() == []
    return moe


def _per_expert_names(state: dict[str, torch.Tensor], mixtral: bool):
    """The checkpoint layout of Hugging Face model files: one tensor per expert and matrix."""
    gate, up, down = ("w1", "w3", "w2") if mixtral else ("gate_proj", "up_proj", "down_proj")
    for name, tensor in state.items():
        if name == "experts.gate_up_proj":
            for expert, fused in enumerate(tensor):
                gate_part, up_part = fused.chunk(2, dim=0)
                yield f"experts.{expert}.{gate}.weight", gate_part
                yield f"experts.{expert}.{up}.weight", up_part
        elif name == "experts.down_proj":
            for expert, matrix in enumerate(tensor):
                yield f"experts.{expert}.{down}.weight", matrix
        else:
            yield name, tensor


@pytest.mark.parametrize("norm_topk_prob", [False, True])
@pytest.mark.parametrize("model_type", MOE_TYPES)
@torch.inference_mode()
def test_routing_and_block_output_match_transformers(model_type, norm_topk_prob):
    overrides = {} if model_type == "mixtral" else dict(norm_topk_prob=norm_topk_prob)
    block, arch = _hf_block(model_type, **overrides)
    state = {name: tensor.detach() for name, tensor in block.state_dict().items()}
    stacked = _corral_block(arch, state.items())
    per_expert = _corral_block(arch, _per_expert_names(state, model_type == "mixtral"))
    hidden = torch.randn(37, arch.hidden_size, generator=torch.Generator().manual_seed(3))

    _, their_weights, their_ids = block.gate(hidden)
    our_weights, our_ids = stacked.route(hidden)
    assert torch.equal(our_ids, their_ids)
    torch.testing.assert_close(our_weights, their_weights.float(), atol=1e-6, rtol=0)
    renormalised = model_type == "mixtral" or norm_topk_prob
    sums = our_weights.sum(dim=-1)
    assert torch.allclose(sums, torch.ones_like(sums)) == renormalised

    expected = block(hidden.unsqueeze(0))[0]
    torch.testing.assert_close(stacked(hidden), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(per_expert(hidden), expected, atol=1e-5, rtol=1e-5)
    counts = stacked.expert_counts
    assert counts.sum() == hidden.shape[0] * arch.num_experts_per_tok
    assert counts.tolist() == torch.bincount(their_ids.flatten(), minlength=8).tolist()


def test_incomplete_experts_are_reported():
    block, arch = _hf_block("qwen2_moe")
    state = dict(_per_expert_names(block.state_dict(), mixtral=False))
    del state["experts.5.up_proj.weight"], state["shared_expert_gate.weight"]
    moe = SparseMoE(8, 2, False, True)
    for name, tensor in state.items():
        moe.load(name, tensor)
    assert moe.finish_loading() == ["expert 5", "gate_up", "down", "shared_gate"]
    assert not moe.load("experts.8.w1.weight", state["gate.weight"])  # expert out of range


# ----- LoRA on a MoE model: attention only ---------------------------------------------------


def test_lora_on_the_attention_of_a_moe_model(moe_model_factory, tmp_path):
    """An attention adapter matches transformers + peft; one that adapts the MLP of a layer of
    experts is refused (peft itself maps gate/up/down targets onto the stacked experts)."""
    from safetensors.torch import load_file, save_file

    from corral import SamplingParams
    from corral.lora.adapter import AdapterError, LoRARequest, inspect_adapter
    from tests.lora.adapters import build_adapter, peft_greedy

    base = moe_model_factory("qwen3_moe")
    modules = ["q_proj", "k_proj", "v_proj", "o_proj"]
    adapter = build_adapter(base, tmp_path / "adapter", seed=1, r=4, target_modules=modules)
    llm = LLM(device=TEST_DEVICE, model=str(base), dtype="float32", enable_lora=True)
    prompts = mixed_prompts(ModelArch.from_dir(base).vocab_size, seed=8)[2:6]
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    outputs = llm.generate(
        [{"prompt_token_ids": p} for p in prompts],
        params,
        use_tqdm=False,
        lora_request=LoRARequest("a", str(adapter)),
    )
    for prompt, output in zip(prompts, outputs):
        assert output.outputs[0].token_ids == peft_greedy(base, adapter, prompt, MAX_TOKENS)[0]

    tensors = load_file(adapter / "adapter_model.safetensors")
    prefix = "base_model.model.model.layers.0"
    for half in ("A", "B"):
        q = tensors[f"{prefix}.self_attn.q_proj.lora_{half}.weight"]
        tensors[f"{prefix}.mlp.gate_proj.lora_{half}.weight"] = q.clone()
    save_file(tensors, adapter / "adapter_model.safetensors")
    with pytest.raises(AdapterError, match="layer 0, which is a mixture of experts"):
        inspect_adapter("moved", adapter, ModelArch.from_dir(base), max_lora_rank=8)
