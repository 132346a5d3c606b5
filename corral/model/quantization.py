"""Weight-only int8 quantization (`--quantization int8`), computed at load from the checkpoint.

Each dense linear's weight [out, in] becomes int8 values and float32 scales, symmetric (no zero
point): per output channel (scale = max |w_row| / 127) or per group of `group_size` inputs.
Activations, biases, norms and the KV cache stay in the model dtype; the matmul dequantizes on the
fly (corral/model/kernels/cpu_int8.cpp on CPU, `int8_linear_reference` elsewhere).

Quantized: every dense layer's qkv, o, gate_up and down. Not quantized: embeddings, norms,
biases, the routed and shared experts of MoE layers, and the LM head by default: on the demo model
an int8 head cut greedy agreement with bf16 from 76% to 66% of tokens for no speed on an AVX2 CPU
(docs/quantization.md); quantize_model(lm_head=True) gives a head (a tied one an int8 copy of
its own, the embedding table used for lookups is left as it is).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from corral.model.kernels import cpu_kernels
from corral.model.packed_weight import PackedWeight

if TYPE_CHECKING:
    from corral.model.models.llama import LlamaFamilyModel

logger = logging.getLogger(__name__)

QUANTIZED_LAYER_WEIGHTS = ("qkv", "o", "gate_up", "down")
INT8_PANEL_OUTPUTS = 64
INT8_MAX_PACKED_GROUP = 512
_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class Int8Weight:
    """A weight [out, in] held as int8 values and float32 scales ([out] or [out, groups]).

    The values are [out, in], or packed in panels for the CPU kernel (cpu_int8_panel.cpp):
    [out / 64, in / 2, 128], for each input pair the panel's 64 outputs' two values side by
    side, output 8s + l of a panel at byte 16s + 2l (+ 1 for the odd input). Packed grouped
    scales are [out / 64, groups, 64] (a panel's 64 scales of each group side by side)."""

    __slots__ = ("qweight", "scales", "dtype")

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> None:
        if qweight.dtype != torch.int8 or qweight.dim() not in (2, 3):
            raise ValueError(
                f"qweight must be a 2-D (or packed 3-D) int8 tensor, got {qweight.dtype} "
                f"{qweight.dim()}-D"
            )
        if qweight.dim() == 2 and scales.dim() not in (1, 2):
            raise ValueError(
                f"plain qweight takes scales [out] or [out, groups], got {scales.dim()}-D"
            )
        if qweight.dim() == 3 and (
            qweight.shape[2] != 2 * INT8_PANEL_OUTPUTS
            or scales.dim() not in (1, 3)
            or (scales.dim() == 3 and scales.shape[2] != INT8_PANEL_OUTPUTS)
        ):
            raise ValueError(
                f"packed qweight must be [out / 64, in / 2, 128] with scales [out] or "
                f"[out / 64, groups, 64], got {tuple(qweight.shape)} and {tuple(scales.shape)}"
            )
        self.qweight = qweight.contiguous()
        self.scales = scales.contiguous()
        self.dtype = dtype  # the activations' (model) dtype
        scale_rows = scales.shape[0] * (INT8_PANEL_OUTPUTS if scales.dim() == 3 else 1)
        if scales.dtype != torch.float32 or scale_rows != self.shape[0]:
            raise ValueError("scales must be float32 with one row per output channel")

    @property
    def shape(self) -> torch.Size:
        if self.is_packed:
            num_panels, num_pairs = self.qweight.shape[:2]
            return torch.Size((num_panels * INT8_PANEL_OUTPUTS, 2 * num_pairs))
        return self.qweight.shape

    @property
    def is_packed(self) -> bool:
        """Whether the values are packed in panels (see the class doc)."""
        return self.qweight.dim() == 3

    def can_pack(self) -> bool:
        """Whether this weight packs: plain, out a multiple of 64, in even, per channel or in
        groups of an even size up to 512 inputs (a group's int32 sums stay below 2^31)."""
        out_features, in_features = self.shape
        return (
            not self.is_packed
            and out_features % INT8_PANEL_OUTPUTS == 0
            and in_features % 2 == 0
            and in_features > 0
            and (
                self.scales.dim() == 1
                or (self.group_size % 2 == 0 and self.group_size <= INT8_MAX_PACKED_GROUP)
            )
        )

    def packed(self) -> Int8Weight:
        """This weight with its values packed in panels (a copy; can_pack must hold)."""
        if not self.can_pack():
            raise ValueError(
                f"{self!r} does not pack: out a multiple of {INT8_PANEL_OUTPUTS}, an even in "
                f"and groups of an even size up to {INT8_MAX_PACKED_GROUP} are needed"
            )
        out_features, in_features = self.shape
        num_panels = out_features // INT8_PANEL_OUTPUTS
        # [panels, sub-panels, 8, pairs, 2] -> [panels, pairs, sub-panels, 8, 2].
        split = self.qweight.reshape(num_panels, 8, 8, in_features // 2, 2)
        values = split.permute(0, 3, 1, 2, 4).reshape(-1, in_features // 2, 2 * INT8_PANEL_OUTPUTS)
        scales = self.scales
        if scales.dim() == 2:  # [out, groups] -> [panels, groups, 64]
            scales = scales.reshape(num_panels, INT8_PANEL_OUTPUTS, -1).permute(0, 2, 1)
        return Int8Weight(values, scales, self.dtype)

    def plain_scales(self) -> torch.Tensor:
        """The scales [out] or [out, groups] (unpacked when packed in groups)."""
        if self.scales.dim() != 3:
            return self.scales
        return self.scales.permute(0, 2, 1).reshape(self.shape[0], -1)

    def plain_values(self) -> torch.Tensor:
        """The int8 values [out, in] (unpacked when packed; the tensor itself when plain)."""
        if not self.is_packed:
            return self.qweight
        out_features, in_features = self.shape
        split = self.qweight.reshape(-1, in_features // 2, 8, 8, 2)
        return split.permute(0, 2, 3, 1, 4).reshape(out_features, in_features)

    @property
    def device(self) -> torch.device:
        return self.qweight.device

    @property
    def group_size(self) -> int:
        """Inputs sharing one scale (the whole row when per channel)."""
        groups = 1 if self.scales.dim() == 1 else self.scales.shape[1]
        return self.shape[1] // groups

    @property
    def nbytes(self) -> int:
        return self.qweight.nbytes + self.scales.nbytes

    def to(self, device: torch.device, dtype: torch.dtype) -> Int8Weight:
        """This weight on device, for activations of dtype (the int8 values and float32 scales
        keep their types)."""
        return Int8Weight(self.qweight.to(device), self.scales.to(device), dtype)

    @staticmethod
    def cat(parts: list[Int8Weight]) -> Int8Weight:
        """Weights of one input size and group size stacked along the outputs (fused q|k|v,
        gate|up)."""
        if len({(p.shape[1], p.group_size, p.dtype) for p in parts}) != 1:
            raise ValueError("int8 weights fused together need one input size and group size")
        if any(p.is_packed for p in parts):
            raise ValueError("int8 weights are fused before they are packed")
        return Int8Weight(
            torch.cat([p.qweight for p in parts]),
            torch.cat([p.scales for p in parts]),
            parts[0].dtype,
        )

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The weight the int8 values stand for: q * scale in float32, then cast to dtype."""
        out_features, in_features = self.shape
        groups = 1 if self.scales.dim() == 1 else self.scales.shape[1]
        values = self.plain_values().reshape(out_features, groups, -1).float()
        weight = (values * self.plain_scales().reshape(out_features, groups, 1)).view(
            out_features, in_features
        )
        return weight.to(dtype or self.dtype)

    def __repr__(self) -> str:
        shape, group_size = tuple(self.shape), self.group_size
        packed = ", packed" if self.is_packed else ""
        return f"Int8Weight(shape={shape}, group_size={group_size}, dtype={self.dtype}{packed})"


def quantize_int8(weight: torch.Tensor, group_size: int | None = None) -> Int8Weight:
    """Symmetric int8 quantization of weight [out, in]: round(w / scale) in [-127, 127], scale =
    max |w| / 127 per output row (group_size None) or per group of group_size inputs."""
    if weight.dim() != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(weight.shape)}")
    out_features, in_features = weight.shape
    if group_size is not None and (group_size % 16 or in_features % group_size):
        raise ValueError(
            f"group_size {group_size} must be a multiple of 16 dividing in_features {in_features}"
        )
    groups = 1 if group_size is None else in_features // group_size
    values = weight.float().view(out_features, groups, -1)
    scales = values.abs().amax(dim=-1, keepdim=True) / 127.0
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))  # all-zero rows stay zero
    qweight = torch.round(values / scales).clamp_(-127, 127).to(torch.int8)
    scales = scales.view(out_features, groups)
    return Int8Weight(
        qweight.view(out_features, in_features),
        scales.view(out_features) if group_size is None else scales,
        weight.dtype,
    )


def int8_linear_reference(
    x: torch.Tensor, weight: Int8Weight, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """The reference (CUDA, no kernels): dequantize, then a plain F.linear in x's dtype."""
    return F.linear(x, weight.dequantize(x.dtype), bias)


def int8_linear(
    x: torch.Tensor, weight: Int8Weight, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """x [num_tokens, in] @ dequant(weight).T (+ bias), in x's dtype."""
    if x.device.type == "cpu" and x.dtype in _KERNEL_DTYPES and x.dim() == 2:
        kernels = cpu_kernels()
        if kernels is not None:
            return kernels.int8_linear(x.contiguous(), weight.qweight, weight.scales, bias)
    return int8_linear_reference(x, weight, bias)


def _plain(weight):
    """weight [out, in] as a tensor (bf16 panels, corral/model/packed_weight.py, unpacked)."""
    return weight.unpack() if isinstance(weight, PackedWeight) else weight


def _nbytes(weight: torch.Tensor | Int8Weight | PackedWeight) -> int:
    return (
        weight.nbytes
        if isinstance(weight, (Int8Weight, PackedWeight))
        else weight.numel() * weight.element_size()
    )


def quantize_model(
    model: LlamaFamilyModel, *, group_size: int | None = None, lm_head: bool = False
) -> tuple[int, int]:
    """Replace the model's dense linear weights by Int8Weight in place (see the module doc);
    returns (bytes of the weights replaced, bytes of their int8 form)."""
    before = after = 0
    for layer in model.layers:
        for name in QUANTIZED_LAYER_WEIGHTS:
            weight = getattr(layer, name)
            if weight is None or isinstance(weight, Int8Weight):
                continue  # MoE layers have no dense gate_up/down
            quantized = quantize_int8(_plain(weight), group_size)
            before += _nbytes(weight)
            after += quantized.nbytes
            setattr(layer, name, quantized)
    if lm_head and model.lm_head is not None and not isinstance(model.lm_head, Int8Weight):
        tied = model.lm_head is model.embed_tokens
        quantized = quantize_int8(_plain(model.lm_head), group_size)
        before += 0 if tied else _nbytes(model.lm_head)  # a tied table stays for lookups
        after += quantized.nbytes
        model.lm_head = quantized
    return before, after


def pack_int8_weights(model: LlamaFamilyModel) -> int:
    """Pack the model's per-channel int8 weights (dense layers and an int8 LM head) in panels
    for the CPU kernel, in place; returns how many bytes were packed.

    The panel kernel quantizes each row of x to int16 as it runs and multiplies in integers
    (cpu_int8_panel.cpp): 1.5-3.6x the dequantizing kernel on one core at 1-32 rows on an AVX2
    CPU, and a row's result moves by at most max |x_r| / 65534 an input times the weights'
    absolute sum (docs/quantization.md). Per-channel and grouped scales (GPTQ/AWQ checkpoints,
    quantize_int8 with a group size) both pack. Not packed: groups of an odd size or above 512
    inputs, tensor-parallel shards, offloaded layers, devices other than the CPU.
    CORRAL_PACK_INT8=0 (or CORRAL_PACK_WEIGHTS=0) keeps the plain layout and the dequantizing
    kernel."""
    if "0" in (os.environ.get("CORRAL_PACK_INT8", "1"), os.environ.get("CORRAL_PACK_WEIGHTS", "1")):
        return 0
    if model.device.type != "cpu" or model.all_reduce is not None or model.offload is not None:
        return 0
    kernels = cpu_kernels()
    if kernels is None or not kernels.int8_panels_supported():
        return 0
    packed_bytes = 0

    def packed(weight):
        nonlocal packed_bytes
        if not isinstance(weight, Int8Weight) or not weight.can_pack():
            return weight
        packed_bytes += weight.qweight.nbytes
        return weight.packed()

    for layer in model.layers:
        for name in QUANTIZED_LAYER_WEIGHTS:
            setattr(layer, name, packed(getattr(layer, name, None)))
    if model.lm_head is not None:
        model.lm_head = packed(model.lm_head)
    if packed_bytes:
        model._loop_weights = None  # the layer loop's lists are rebuilt from the packed values
        logger.info("packed %.1f MiB of int8 weights in panels", packed_bytes / 2**20)
    return packed_bytes


def apply_quantization(model: LlamaFamilyModel, method: str | None) -> None:
    """Quantize a loaded model as ModelConfig.quantization says (None/"none": leave it)."""
    if method in (None, "none"):
        return
    if any(isinstance(layer.qkv, Int8Weight) for layer in model.layers):
        raise ValueError(
            f"quantization {method!r} for a checkpoint whose weights are quantized already "
            "(GPTQ or AWQ, loaded as int8 as they are): leave quantization unset"
        )
    if method not in ("int8", "int8-all"):
        raise ValueError(f"quantization {method!r} is not one of none, int8, int8-all")
    lm_head = method == "int8-all"
    before, after = quantize_model(model, lm_head=lm_head)
    moe = sum(layer.moe is not None for layer in model.layers)
    logger.info(
        "int8 weight quantization: %.1f MiB of linear weights became %.1f MiB (per-channel "
        "scales; embeddings, %snorms%s kept in %s)",
        before / 2**20,
        after / 2**20,
        "" if lm_head else "LM head, ",
        f", {moe} MoE layers' experts" if moe else "",
        str(model.dtype).removeprefix("torch."),
    )
