"""Pre-quantized checkpoints: 4-bit GPTQ and AWQ weights loaded as corral's int8 group weights
(corral/model/quantization.py Int8Weight), exactly.

Both formats store, per group of `group_size` input features and per output feature, a scale s
and a 4-bit zero point z, and each weight as a 4-bit value q: w = s * (q - z). q - z lies in
[-15, 15], so it is an int8 value and s its group's scale: the int8 kernels compute with the
very weights the checkpoint describes (at twice the bytes of 4-bit storage).

Layouts (int32 words holding eight 4-bit values, lowest bits first):
- GPTQ: qweight [in / 8, out] (packed along the inputs), qzeros [groups, out / 8], scales
  [groups, out], g_idx [in] (each input's group). Checkpoints in the original format
  (checkpoint_format "gptq", the default) store z - 1; "gptq_v2" stores z. Act-order
  checkpoints whose g_idx is not input // group_size are refused (their groups are not
  contiguous runs of inputs).
- AWQ (version "gemm"): qweight [in, out / 8] and qzeros [groups, out / 8], packed along the
  outputs with the eight values of a word in the order 0, 2, 4, 6, 1, 3, 5, 7; scales
  [groups, out]; z stored as is.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from corral.model.prequantized_format import PrequantizedFormat
from corral.model.quantization import Int8Weight

_PARTS = ("qweight", "qzeros", "scales", "g_idx")
_SHIFTS = torch.arange(0, 32, 4, dtype=torch.int32)
# AWQ's word holds outputs 0, 2, 4, 6, 1, 3, 5, 7 in its nibbles 0..7: output k is nibble
# _AWQ_NIBBLE_OF[k].
_AWQ_NIBBLE_OF = (0, 4, 1, 5, 2, 6, 3, 7)


def packed_to_int8(
    fmt: PrequantizedFormat, prefix: str, parts: dict[str, torch.Tensor]
) -> Int8Weight:
    """One linear's packed tensors as an Int8Weight [out, in] (dtype: the scales')."""
    missing = [part for part in ("qweight", "qzeros", "scales") if part not in parts]
    if missing:
        raise ValueError(f"{prefix}: {fmt.method} weight without {', '.join(missing)}")
    scales = parts["scales"]
    if fmt.method == "gptq":
        values = _unpack(parts["qweight"], dim=0)  # [in, out]
    else:
        values = _awq_order(_unpack(parts["qweight"], dim=1))  # [in, out]
    zeros = _unpack(parts["qzeros"], dim=1)
    if fmt.method == "awq":
        zeros = _awq_order(zeros)
    zeros = zeros + fmt.zero_offset  # [groups, out]
    in_features, out_features = values.shape
    num_groups = scales.shape[0]
    if scales.shape[1] != out_features or zeros.shape != scales.shape or in_features % num_groups:
        raise ValueError(
            f"{prefix}: {fmt.method} shapes do not agree (qweight as [in, out] "
            f"{tuple(values.shape)}, zeros {tuple(zeros.shape)}, scales {tuple(scales.shape)})"
        )
    group_size = in_features // num_groups
    g_idx = parts.get("g_idx")
    if g_idx is not None:
        contiguous = torch.arange(in_features, dtype=torch.int64) // group_size
        if not torch.equal(g_idx.to(torch.int64), contiguous):
            raise ValueError(
                f"{prefix}: act-order GPTQ (g_idx is not input // {group_size}) is not "
                "supported: its groups are not contiguous runs of inputs"
            )
    grouped = values.view(num_groups, group_size, out_features) - zeros.unsqueeze(1)
    qweight = grouped.permute(2, 0, 1).reshape(out_features, in_features).to(torch.int8)
    scale_rows = scales.float().t().contiguous()  # [out, groups]
    if num_groups == 1:
        scale_rows = scale_rows.view(out_features)
    return Int8Weight(qweight, scale_rows, scales.dtype)


def _unpack(packed: torch.Tensor, dim: int) -> torch.Tensor:
    """Eight 4-bit values per int32 word, lowest bits first, spread along dim (0 or 1)."""
    words = packed.to(torch.int32)
    if dim == 0:
        values = (words.unsqueeze(1) >> _SHIFTS.view(1, 8, 1)) & 0xF
        return values.reshape(words.shape[0] * 8, words.shape[1]).to(torch.int16)
    values = (words.unsqueeze(-1) >> _SHIFTS) & 0xF
    return values.reshape(words.shape[0], words.shape[1] * 8).to(torch.int16)


def _awq_order(unpacked: torch.Tensor) -> torch.Tensor:
    """Columns of an AWQ-packed tensor, unpacked nibble by nibble, back in output order."""
    rows, columns = unpacked.shape
    by_word = unpacked.view(rows, columns // 8, 8)
    return by_word[:, :, list(_AWQ_NIBBLE_OF)].reshape(rows, columns)


def convert_prequantized(
    named_tensors: Iterable[tuple[str, torch.Tensor]], fmt: PrequantizedFormat
) -> Iterator[tuple[str, torch.Tensor | Int8Weight]]:
    """The checkpoint's tensors with each packed linear (prefix.qweight, .qzeros, .scales,
    .g_idx) replaced by one prefix.weight Int8Weight; other tensors pass through."""
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in named_tensors:
        prefix, _, part = name.rpartition(".")
        if part in _PARTS:
            pending.setdefault(prefix, {})[part] = tensor
        else:
            yield name, tensor
    for prefix, parts in pending.items():
        yield f"{prefix}.weight", packed_to_int8(fmt, prefix, parts)
