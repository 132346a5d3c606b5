"""`roofline`: an analytic step time from the model's shape and a hardware spec.

Per step, two operator groups each take max(compute time, memory time) (a roofline), plus
tensor-parallel all-reduces and a fixed CPU overhead:
- linear layers and the LM head: 2 FLOPs per weight per token (LM head: per sampled token),
  reading every weight once per step. Mixture-of-experts models count the *active* weights
  (ModelArch.num_active_params: num_experts_per_tok routed experts per token) for FLOPs, and
  read the dense weights plus every expert the step's tokens touch, expected under uniform
  independent routing: num_experts * (1 - (1 - top_k / num_experts) ** num_tokens) per MoE
  layer (one token reads top_k experts; a large batch reads them all);
- attention: 4 * heads * head_dim FLOPs per (query, key) pair per layer, reading the KV cache of
  every context token and writing the new tokens' KV;
- tensor parallelism (tp devices): weights, heads and KV heads split tp ways; two ring
  all-reduces of tokens * hidden * dtype bytes per layer, 2 (tp - 1) / tp of the payload over
  the per-direction link bandwidth plus 2 (tp - 1) link latencies each.
Peaks are scaled by the spec's achievable-efficiency factors. LoRA adapters add their own
operator group at the same rates (corral/sim/cost/lora.py).
"""

from __future__ import annotations

from typing import Any

from corral.core.batch_shape import BatchShape
from corral.model.arch import ModelArch
from corral.sim.cost.base import COST_MODELS, CostModel, CostModelOptions
from corral.sim.cost.hardware import HardwareSpec
from corral.sim.cost.lora import LoRACost

_DTYPE_NAMES = {1: "float8", 2: "bfloat16", 4: "float32"}


def layer_params(arch: ModelArch) -> int:
    """Parameters in the decoder layers (everything but the embeddings and final norm)."""
    embeddings = arch.vocab_size * arch.hidden_size * (1 if arch.tie_word_embeddings else 2)
    return arch.num_params() - embeddings - arch.hidden_size


def active_layer_params(arch: ModelArch) -> int:
    """Decoder-layer parameters one token computes with (all of them for dense models)."""
    return layer_params(arch) - (arch.num_params() - arch.num_active_params())


def expected_experts_touched(arch: ModelArch, num_tokens: int) -> float:
    """Distinct experts per MoE layer that num_tokens tokens select, in expectation, when each
    picks num_experts_per_tok of num_experts uniformly and independently (0 for dense models)."""
    experts, top_k = arch.num_experts, arch.num_experts_per_tok
    if not arch.is_moe or num_tokens <= 0:
        return 0.0
    return experts * (1.0 - (1.0 - top_k / experts) ** num_tokens)


@COST_MODELS.register("roofline")
class RooflineCostModel(CostModel):
    def __init__(
        self,
        arch: ModelArch,
        hardware: HardwareSpec,
        *,
        tensor_parallel_size: int = 1,
        dtype_bytes: int = 2,
        step_overhead_s: float | None = None,
    ) -> None:
        tp = tensor_parallel_size
        if tp < 1 or tp > hardware.max_devices_per_instance:
            raise ValueError(
                f"tensor_parallel_size {tp} must be in [1, {hardware.max_devices_per_instance}] "
                f"for {hardware.name}"
            )
        if arch.num_heads % tp:
            raise ValueError(f"{arch.num_heads} attention heads do not split {tp} ways")
        if tp > 1 and hardware.interconnect_bandwidth_bytes_per_s <= 0:
            raise ValueError(f"{hardware.name} has no interconnect for tensor parallelism")
        self.arch, self.hardware, self.tp, self.dtype_bytes = arch, hardware, tp, dtype_bytes
        flops = hardware.flops_for(_DTYPE_NAMES.get(dtype_bytes, "bfloat16"))
        self._flops = flops * hardware.flops_efficiency
        self._bandwidth = hardware.memory_bandwidth_bytes_per_s * hardware.bandwidth_efficiency
        lm_head = arch.hidden_size * arch.vocab_size
        self._flops_per_token = 2 * active_layer_params(arch) / tp
        self._flops_per_sampled = 2 * lm_head / tp
        # Routed experts are read only when touched (step_time_s); the rest on every step.
        expert_params = arch.num_moe_layers * arch.expert_params()  # one expert, every MoE layer
        self._expert_bytes = expert_params * dtype_bytes / tp
        routed = expert_params * arch.num_experts
        self._weight_bytes = (layer_params(arch) - routed + lm_head) * dtype_bytes / tp
        self._all_weight_bytes = (layer_params(arch) + lm_head) * dtype_bytes / tp
        self._flops_per_pair = 4 * arch.num_layers * arch.num_heads * arch.head_dim / tp
        kv_shards = min(tp, arch.num_kv_heads)  # KV heads are replicated past num_kv_heads
        self._kv_bytes_per_token = arch.kv_bytes_per_token(dtype_bytes) / kv_shards
        self._overhead_s = hardware.step_overhead_s if step_overhead_s is None else step_overhead_s
        if tp > 1:
            link = hardware.interconnect_bandwidth_bytes_per_s
            per_token = arch.hidden_size * dtype_bytes * 2 * (tp - 1) / tp / link
            self._comm_s_per_token = 2 * arch.num_layers * per_token
            self._comm_fixed_s = (
                2 * arch.num_layers * 2 * (tp - 1) * hardware.interconnect_latency_s
            )
        else:
            self._comm_s_per_token = self._comm_fixed_s = 0.0

    @classmethod
    def from_options(cls, options: CostModelOptions) -> CostModel:
        if options.arch is None or options.hardware is None:
            raise ValueError("the roofline cost model needs a model shape and a hardware spec")
        return cls(
            options.arch,
            options.hardware,
            tensor_parallel_size=options.tensor_parallel_size,
            dtype_bytes=options.dtype_bytes,
            step_overhead_s=options.step_overhead_s,
        )

    def step_time_s(self, batch: BatchShape) -> float:
        num_tokens = batch.num_prefill_tokens + batch.num_decode_requests
        linear_flops = num_tokens * self._flops_per_token + batch.num_sampled * (
            self._flops_per_sampled
        )
        weight_bytes = self._weight_bytes
        if self._expert_bytes:
            weight_bytes += self._expert_bytes * expected_experts_touched(self.arch, num_tokens)
        linear = max(linear_flops / self._flops, weight_bytes / self._bandwidth)
        pairs = batch.prefill_attention_pairs + batch.decode_context_tokens
        kv_tokens = (
            (batch.prefill_context_tokens + 2 * batch.num_prefill_tokens)
            + batch.decode_context_tokens
            + batch.num_decode_requests
        )
        attention = max(
            pairs * self._flops_per_pair / self._flops,
            kv_tokens * self._kv_bytes_per_token / self._bandwidth,
        )
        comm = num_tokens * self._comm_s_per_token + self._comm_fixed_s
        return self._overhead_s + linear + attention + comm

    def lora_cost(self, segment_overhead_s: float) -> LoRACost:
        """The adapters at this roofline's achievable FLOP/s and bandwidth, split tp ways."""
        return LoRACost.for_arch(
            self.arch,
            dtype_bytes=self.dtype_bytes,
            flops_per_s=self._flops,
            bytes_per_s=self._bandwidth,
            segment_overhead_s=segment_overhead_s,
            tensor_parallel_size=self.tp,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "roofline",
            "hardware": self.hardware.name,
            "tensor_parallel_size": self.tp,
            "dtype_bytes": self.dtype_bytes,
            "weight_bytes_per_device": self._all_weight_bytes,
            "step_overhead_s": self._overhead_s,
        }
