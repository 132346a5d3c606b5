"""The roofline prices mixture-of-experts steps by active parameters and touched experts."""

from __future__ import annotations

import pytest

from corral.core.batch_shape import BatchShape
from corral.model.arch import ModelArch
from corral.sim.cost.roofline import (
    RooflineCostModel,
    active_layer_params,
    expected_experts_touched,
    layer_params,
)
from tests.sim.test_cost_models import ARCH, HARDWARE

MIXTRAL_8X7B = {
    "architectures": ["MixtralForCausalLM"],
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 32000,
    "num_local_experts": 8,
    "num_experts_per_tok": 2,
    "max_position_embeddings": 32768,
    "rope_theta": 1e6,
    "sliding_window": None,
}
QWEN3_30B_A3B = {
    "architectures": ["Qwen3MoeForCausalLM"],
    "hidden_size": 2048,
    "intermediate_size": 6144,
    "moe_intermediate_size": 768,
    "num_hidden_layers": 48,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "head_dim": 128,
    "vocab_size": 151936,
    "num_experts": 128,
    "num_experts_per_tok": 8,
    "norm_topk_prob": True,
    "decoder_sparse_step": 1,
    "mlp_only_layers": [],
    "max_position_embeddings": 40960,
    "sliding_window": None,
    "use_sliding_window": False,
}


def test_published_total_and_active_parameter_counts():
    mixtral = ModelArch.from_hf_config(MIXTRAL_8X7B)
    assert mixtral.num_params() / 1e9 == pytest.approx(46.7, abs=0.05)
    assert mixtral.num_active_params() / 1e9 == pytest.approx(12.9, abs=0.05)
    qwen3 = ModelArch.from_hf_config(QWEN3_30B_A3B)
    assert qwen3.num_params() / 1e9 == pytest.approx(30.5, abs=0.05)
    assert qwen3.num_active_params() / 1e9 == pytest.approx(3.3, abs=0.1)  # 3.35: card says 3.3
    assert qwen3.qk_norm and qwen3.norm_topk_prob and mixtral.norm_topk_prob


def test_arch_survives_a_json_round_trip():
    arch = ModelArch.from_hf_config({**QWEN3_30B_A3B, "mlp_only_layers": [0, 5]})
    fields = {name: getattr(arch, name) for name in arch.__dataclass_fields__}
    fields["mlp_only_layers"] = list(fields["mlp_only_layers"])
    assert ModelArch(**fields) == arch
    assert not arch.is_moe_layer(5) and arch.is_moe_layer(4)


def test_dense_models_are_priced_as_before():
    assert active_layer_params(ARCH) == layer_params(ARCH)
    assert expected_experts_touched(ARCH, 100) == 0.0


def test_moe_decode_reads_the_touched_experts_and_computes_the_active_ones():
    arch = ModelArch.from_hf_config(MIXTRAL_8X7B)
    model = RooflineCostModel(arch, HARDWARE.with_overrides(peak_flops={"bfloat16": 1e18}))
    one = BatchShape.of_chunks([(1, 0, True)])
    experts = arch.num_moe_layers * arch.expert_params()
    dense = layer_params(arch) - arch.num_experts * experts + arch.hidden_size * arch.vocab_size
    kv = 2 * arch.kv_bytes_per_token(2)  # read one token's K and V, write one
    weights_one = (dense + 2 * experts) * 2  # one token reads its top-2 experts
    assert model.step_time_s(one) == pytest.approx(0.001 + (weights_one + kv) / 1e9, rel=1e-9)
    # a large batch touches every expert: all weights are read
    big = BatchShape.of_chunks([(1, 0, True)] * 256)
    touched = expected_experts_touched(arch, 256)
    assert touched == pytest.approx(arch.num_experts)
    assert model.describe()["weight_bytes_per_device"] == (
        (layer_params(arch) + arch.hidden_size * arch.vocab_size) * 2
    )
    assert model.step_time_s(big) > model.step_time_s(one)


def test_moe_prefill_flops_count_active_parameters():
    arch = ModelArch.from_hf_config(MIXTRAL_8X7B)
    slow = HARDWARE.with_overrides(peak_flops={"bfloat16": 1e9}, memory_bandwidth_bytes_per_s=1e18)
    model = RooflineCostModel(arch, slow)
    batch = BatchShape.of_chunks([(512, 0, True)])
    linear = (512 * 2 * active_layer_params(arch) + 2 * arch.hidden_size * arch.vocab_size) / 1e9
    attention = batch.prefill_attention_pairs * 4 * arch.num_layers * 32 * 128 / 1e9
    assert model.step_time_s(batch) == pytest.approx(0.001 + linear + attention, rel=1e-6)
    assert active_layer_params(arch) < layer_params(arch) / 3
