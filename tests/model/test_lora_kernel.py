"""The C++ multi-adapter LoRA kernel (lora_shrink_expand) against add_lora_reference: mixed
segments of different slots and ranks, fused parts of unequal widths, unsorted rows, rows in no
segment (left bit for bit), a prefill segment, padding beyond an adapter's rank (never read),
and refused inputs."""

from __future__ import annotations

import pytest
import torch

from corral.lora.apply import LoRATarget, add_lora, add_lora_reference
from corral.lora.batch import LoRABatch
from corral.model.kernels import cpu_kernels

kernels = cpu_kernels()
needs_kernels = pytest.mark.skipif(kernels is None, reason="the CPU kernels did not build here")
BF16_EPS = 2.0**-7


def make_target(
    num_slots: int,
    max_rank: int,
    in_features: int,
    widths: list[int],
    dtype: torch.dtype,
    slot_ranks: list[int],
    padding: float = 0.0,
) -> LoRATarget:
    """Random stacks; entries beyond each slot's rank hold `padding` (NaN: must never be read)."""
    offsets = [0]
    for width in widths:
        offsets.append(offsets[-1] + width)
    a = torch.randn(num_slots, len(widths) * max_rank, in_features) / in_features**0.5
    b = torch.randn(num_slots, offsets[-1], max_rank) / max_rank**0.5
    for slot, rank in enumerate(slot_ranks):
        for part in range(len(widths)):
            a[slot, part * max_rank + rank : (part + 1) * max_rank] = padding
        b[slot, :, rank:] = padding
    return LoRATarget.create(a.to(dtype), b.to(dtype), offsets)


def make_batch(segments: list[tuple[list[int], int, int]]) -> LoRABatch:
    """segments: (batch rows in any order, slot, rank)."""
    rows: list[int] = []
    starts = [0]
    for seg_rows, _, _ in segments:
        rows.extend(seg_rows)
        starts.append(len(rows))
    return LoRABatch(
        rows=torch.tensor(rows, dtype=torch.int64),
        seg_starts=torch.tensor(starts, dtype=torch.int64),
        seg_slots=torch.tensor([s[1] for s in segments], dtype=torch.int64),
        seg_ranks=torch.tensor([s[2] for s in segments], dtype=torch.int64),
        segments=tuple(
            (starts[g], starts[g + 1], slot, rank) for g, (_, slot, rank) in enumerate(segments)
        ),
    )


def run_kernel(target, batch, x, out0):
    got = out0.clone()
    kernels.lora_shrink_expand(
        got,
        x,
        target.a,
        target.b,
        target.part_offsets_tensor,
        batch.rows,
        batch.seg_starts,
        batch.seg_slots,
        batch.seg_ranks,
    )
    return got


def run_both(target, batch, num_rows, dtype):
    """(out before, add_lora_reference's out, the kernel's out) for random x and out."""
    x = torch.randn(num_rows, target.a.shape[2]).to(dtype)
    out0 = torch.randn(num_rows, target.part_offsets[-1]).to(dtype)
    expected = out0.clone()
    add_lora_reference(expected, x, target.a, target.b, list(target.part_offsets), batch)
    return out0, expected, run_kernel(target, batch, x, out0)


def assert_matches(out0, expected, got, batch):
    untouched = torch.ones(out0.shape[0], dtype=torch.bool)
    for start, end, _, rank in batch.segments:
        if rank > 0:
            untouched[batch.rows[start:end]] = False
    assert torch.equal(got[untouched], out0[untouched])  # bit for bit
    assert torch.isfinite(got).all()
    if got.dtype == torch.float32:
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    else:  # a couple of ulps of the operands: delta and the sum are each rounded once
        error = (got.float() - expected.float()).abs()
        bound = 2 * BF16_EPS * (out0.float().abs() + expected.float().abs()) + 1e-6
        assert (error <= bound).all(), error.max()
        assert (got == expected).float().mean() > 0.95  # same rounding points as the reference
    assert not torch.equal(got, out0)  # something was added


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("widths", [[37, 12, 20], [53], [64, 64]])
@pytest.mark.parametrize("in_features", [67, 96])
def test_mixed_segments_match_reference(dtype, widths, in_features):
    torch.manual_seed(0)
    max_rank = 8
    slot_ranks = [8, 3, 4, 5, 0]
    target = make_target(5, max_rank, in_features, widths, dtype, slot_ranks)
    batch = make_batch(
        [
            ([7, 2, 11], 2, 4),  # rank < max_rank, rows unsorted
            ([0], 0, 8),  # rank == max_rank
            ([15, 9, 4, 1, 13, 5, 17, 19, 3, 8], 3, 5),  # more than one tile of rows
            ([6], 1, 3),
            ([18], 4, 0),  # rank 0: no delta
        ]
    )  # rows 10, 12, 14, 16 use no adapter
    assert_matches(*run_both(target, batch, 20, dtype), batch)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_padding_beyond_rank_is_never_read(dtype):
    torch.manual_seed(1)
    slot_ranks = [3, 16, 9]
    target = make_target(3, 16, 48, [24, 8, 16], dtype, slot_ranks, padding=float("nan"))
    batch = make_batch([([4, 1], 0, 3), ([0, 3], 1, 16), ([2, 5, 6], 2, 9)])
    assert_matches(*run_both(target, batch, 8, dtype), batch)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_rows_over_sixteen_adapters(dtype):
    torch.manual_seed(2)
    slot_ranks = [16, 8] * 8
    target = make_target(16, 16, 576, [576, 192, 192], dtype, slot_ranks)
    order = torch.randperm(32).tolist()
    batch = make_batch([(order[2 * s : 2 * s + 2], s, slot_ranks[s]) for s in range(16)])
    assert_matches(*run_both(target, batch, 34, dtype), batch)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prefill_segment_of_300_rows(dtype):
    torch.manual_seed(3)
    target = make_target(2, 16, 576, [576, 192, 192], dtype, [16, 16])
    rows = torch.randperm(310)[:300].tolist()  # ten rows in no segment
    batch = make_batch([(rows, 1, 16)])
    x = torch.randn(310, 576).to(dtype)
    out0 = torch.randn(310, 960).to(dtype)
    expected = out0.clone()
    add_lora_reference(expected, x, target.a, target.b, target.part_offsets, batch)
    got = run_kernel(target, batch, x, out0)
    assert_matches(out0, expected, got, batch)
    # Large enough to run on several threads: the result must not depend on their number.
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = run_kernel(target, batch, x, out0)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(serial, got)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_add_lora_matches_reference(dtype):
    torch.manual_seed(4)
    target = make_target(3, 8, 40, [16, 8, 8], dtype, [8, 2, 6])
    batch = LoRABatch.from_row_slots([1, -1, 0, 2, 1, -1, 2], [8, 2, 6], torch.device("cpu"))
    x = torch.randn(7, 40).to(dtype)
    out0 = torch.randn(7, 32).to(dtype)
    expected, got = out0.clone(), out0.clone()
    add_lora_reference(expected, x, target.a, target.b, target.part_offsets, batch)
    add_lora(got, x, target, batch)
    assert_matches(out0, expected, got, batch)


@needs_kernels
def test_bad_inputs_are_refused():
    torch.manual_seed(5)
    target = make_target(2, 4, 16, [8, 8], torch.float32, [4, 4])
    batch = make_batch([([0, 2], 1, 4)])
    x, out = torch.randn(3, 16), torch.zeros(3, 16)
    args = dict(
        out=out,
        x=x,
        a=target.a,
        b=target.b,
        part_offsets=target.part_offsets_tensor,
        rows=batch.rows,
        seg_starts=batch.seg_starts,
        seg_slots=batch.seg_slots,
        seg_ranks=batch.seg_ranks,
    )
    kernels.lora_shrink_expand(*args.values())  # valid as given
    bad = {
        "x": x.to(torch.bfloat16),  # dtype differs from out's
        "out": torch.zeros(16, 3).T,  # not contiguous
        "a": target.a[:, :, :8].contiguous(),  # in_features differs from x's
        "b": target.b[:1].contiguous(),  # slot count differs from a's
        "part_offsets": torch.tensor([0, 8, 15]),  # does not end at out_features
        "rows": torch.tensor([0, 3]),  # row out of range
        "seg_slots": torch.tensor([2]),  # slot out of range
        "seg_ranks": torch.tensor([5]),  # rank above max_rank
        "seg_starts": torch.tensor([0, 3]),  # beyond rows
    }
    for name, value in bad.items():
        with pytest.raises(RuntimeError, match="lora_shrink_expand"):
            kernels.lora_shrink_expand(*{**args, name: value}.values())
    with pytest.raises(RuntimeError, match="more than once"):
        kernels.lora_shrink_expand(*{**args, "rows": torch.tensor([2, 2])}.values())
    with pytest.raises(RuntimeError, match="int64"):
        kernels.lora_shrink_expand(*{**args, "rows": batch.rows.int()}.values())
    x64 = {name: value.double() for name, value in args.items() if name in ("out", "x", "a", "b")}
    with pytest.raises(RuntimeError, match="float32, bfloat16 or float16"):
        kernels.lora_shrink_expand(*{**args, **x64}.values())
