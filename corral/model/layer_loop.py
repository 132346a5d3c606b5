"""The C++ layer loop (corral/model/kernels/cpu_layer_loop.cpp): a decode step's whole decoder
stack in one call, with the same kernels in the same order as LlamaFamilyModel._forward_fused,
so results are bit for bit the same; what it saves is the per-layer Python and tensor
bookkeeping (about 1 ms of a 19 ms single-stream step of the SmolLM-135M shape here).

It covers the plain case only (dense bf16/fp32, packed bf16 or int8 weights); anything else
takes the Python path: steps with prefill rows, LoRA, attention sinks or windows, quantized KV,
and models with q/k norm, tensor parallelism, MoE layers, weight offloading or dynamic rope.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import torch

from corral.lora.step import LoRAStep
from corral.model.layers.attention import AttentionMetadata, LayerKVCache
from corral.model.layers.linear import uses_row_kernel
from corral.model.packed_weight import PackedWeight
from corral.model.quantization import Int8Weight

if TYPE_CHECKING:
    from corral.model.models.llama import LlamaFamilyModel

_LINEARS = ("qkv", "o", "gate_up", "down")
# Per model, the kernels' LayerLoop last bound: (its KV cache list, the loop, whether it has the
# head decode_greedy needs, the embedding it was bound with).
_BOUND_LOOPS: weakref.WeakKeyDictionary[LlamaFamilyModel, tuple] = weakref.WeakKeyDictionary()


def _linear_tensors(weight, bias: torch.Tensor | None) -> list[torch.Tensor | None] | None:
    """A linear's tensors in the loop's order: weight or int8 values, int8 scales or None, bias
    or None; None when the loop cannot run it."""
    if isinstance(weight, Int8Weight):
        return [weight.qweight, weight.scales, bias]
    if type(weight) is torch.Tensor:
        return [weight, None, bias]
    if isinstance(weight, PackedWeight):  # read by few_row_linear as a 3-D tensor
        return [weight.data, None, bias]
    return None


def _loop_tensors(layer) -> list[torch.Tensor | None] | None:
    """A layer's tensors in the loop's order (cpu_layer_loop.cpp LayerWeight): the input norm,
    q|k|v (weight or int8 values, int8 scales or None, bias or None), o likewise, the post
    norm, gate|up, down; None when the loop cannot run it."""
    if layer.moe is not None:
        return None
    tensors: list[torch.Tensor | None] = [layer.input_norm]
    for name in _LINEARS:
        linear_tensors = _linear_tensors(getattr(layer, name), getattr(layer, name + "_bias"))
        if linear_tensors is None:
            return None
        tensors += linear_tensors
        if name == "o":
            tensors.append(layer.post_norm)
    return tensors


def layer_loop_weights(
    model: LlamaFamilyModel,
    metadata: AttentionMetadata,
    lora: LoRAStep | None,
    kv_caches: list[LayerKVCache],
) -> list[list[torch.Tensor | None]] | None:
    """Every layer's weights in the loop's order when this step can take the loop, else None."""
    if lora is not None or metadata.prefills:
        return None
    if metadata.decode is None or metadata.sinks is not None or metadata.sliding_window:
        return None
    return _model_loop_weights(model, kv_caches)


def _model_loop_weights(
    model: LlamaFamilyModel, kv_caches: list[LayerKVCache]
) -> list[list[torch.Tensor | None]] | None:
    """The model's (and its caches') part of the answer; the model's is worked out once
    (model._loop_weights; [] for no)."""
    if not model.use_layer_loop:
        return None
    cache = kv_caches[0]
    if cache.key_scale is not None or cache.key.dtype != model.dtype:
        return None
    if model._loop_weights is None:
        plain = not (
            model.arch.qk_norm
            or model.all_reduce is not None
            or model.offload is not None
            or model.rotary.dynamic is not None
            or any(window is not None for window in model.layer_windows)
        )
        weights = [_loop_tensors(layer) for layer in model.layers]
        covered = all(tensors is not None for tensors in weights)
        model._loop_weights = weights if plain and covered else []  # type: ignore[assignment]
        _BOUND_LOOPS.pop(model, None)
    return model._loop_weights or None


def _layer_loop_of(
    model: LlamaFamilyModel, kernels, kv_caches: list[LayerKVCache]
) -> tuple[Any, bool] | None:
    """The kernels' LayerLoop for the model and these caches (its weights, caches, head and
    constants converted once) and whether it has the head decode_greedy needs, or None when
    the loop cannot run this model. The last one bound for a model is kept (a model serves one
    cache list); bound again for other caches or embedding, and with model._loop_weights
    (which packing and quantization reset, as they replace the LM head)."""
    weights = _model_loop_weights(model, kv_caches)
    if weights is None:
        return None
    embed = model.embed_tokens
    bound = _BOUND_LOOPS.get(model)
    if bound is not None and bound[0] is kv_caches and bound[3] is embed:
        return bound[1], bound[2]
    lm_head = _linear_tensors(model.lm_head, None)
    head_ok = lm_head is not None and (
        isinstance(embed, PackedWeight) or type(embed) is torch.Tensor
    )
    loop = kernels.LayerLoop(
        weights,
        [cache.key for cache in kv_caches],
        [cache.value for cache in kv_caches],
        *_stack_constants(model),
        (embed.data if isinstance(embed, PackedWeight) else embed) if head_ok else None,
        isinstance(embed, PackedWeight),
        lm_head if head_ok else [],
        model.rotary.cos if head_ok else None,
        model.rotary.sin if head_ok else None,
    )
    _BOUND_LOOPS[model] = (kv_caches, loop, head_ok, embed)
    return loop, head_ok


def forward_layer_loop(
    model: LlamaFamilyModel,
    kernels,
    input_ids: torch.Tensor,
    positions: torch.Tensor,
    kv_caches: list[LayerKVCache],
    metadata: AttentionMetadata,
) -> torch.Tensor:
    """The hidden states after the final norm, as LlamaFamilyModel.forward returns them (for a
    step layer_loop_weights accepted)."""
    cos, sin, rows = model.rotary_tables(positions, metadata)
    decode = metadata.decode
    assert decode is not None
    bound = _layer_loop_of(model, kernels, kv_caches)
    assert bound is not None  # layer_loop_weights accepted the step
    return bound[0].decode_layers(
        model.embed_tokens[input_ids],
        rows,
        cos,
        sin,
        metadata.slot_mapping,
        decode.block_table,
        decode.seq_lens,
        uses_row_kernel(input_ids.shape[0], model.dtype, model.device),
    )


def _stack_constants(model: LlamaFamilyModel) -> tuple:
    """The decoder stack's constants, in the LayerLoop constructor's order after its caches:
    final norm, attention scale, RMSNorm eps, query heads, KV heads, head size."""
    arch = model.arch
    return (
        model.final_norm,
        model.scale,
        arch.rms_norm_eps,
        arch.num_heads,
        arch.num_kv_heads,
        arch.head_dim,
    )


def decode_greedy(
    model: LlamaFamilyModel,
    kernels,
    kv_caches: list[LayerKVCache],
    sequences: list[tuple[list[int], int, list[int]]],
    block_size: int,
    num_steps: int,
) -> list[list[int]] | None:
    """num_steps greedy decode steps of several sequences in one kernel call (a draft model's
    proposals). sequences: (tokens to compute, the first one's position, block table); the
    first step computes each sequence's tokens as decode rows (at most MAX_DECODE_ROW_TOKENS
    each, the caller's to ensure) and takes the last one's logits, each later step one row per
    sequence, the token chosen before. The block table covers the last position +
    num_steps - 1. Tokens are the argmax of the logits compute_logits gives, as forward +
    compute_logits + argmax would choose them. Returns each sequence's num_steps tokens, or None
    when the loop cannot run this model (then take forward step by step)."""
    bound = _layer_loop_of(model, kernels, kv_caches)
    if bound is None or not bound[1]:
        return None
    width = max(len(table) for _, _, table in sequences)
    rows: list[int] = []
    positions: list[int] = []
    row_seqs: list[int] = []
    last_rows: list[int] = []
    tables: list[int] = []
    for index, (token_ids, first_position, table) in enumerate(sequences):
        rows += token_ids
        positions += range(first_position, first_position + len(token_ids))
        row_seqs += [index] * len(token_ids)
        last_rows.append(len(rows) - 1)
        tables += table
        tables += [0] * (width - len(table))
    return bound[0].decode_greedy(
        rows,
        positions,
        row_seqs,
        last_rows,
        num_steps,
        tables,
        width,
        block_size,
        uses_row_kernel(len(rows), model.dtype, model.device),
        uses_row_kernel(len(sequences), model.dtype, model.device),
    )
