"""Paged decode attention over runs of rows of one sequence (a request's verification rows in
speculative decoding): the kernel reads the shared keys once for the whole run, and every row's
output must be the same bits as when the row is computed alone."""

import pytest
import torch

from corral.model.kernels import cpu_kernels

_KERNELS = cpu_kernels()
pytestmark = pytest.mark.skipif(_KERNELS is None, reason="the CPU kernels are not built")


def _cache(num_blocks, block_size, num_kv_heads, head_dim, quantized, generator):
    keys = torch.randn(num_blocks, num_kv_heads, head_dim, block_size, generator=generator)
    values = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=generator)
    if not quantized:
        return keys.to(torch.bfloat16), values.to(torch.bfloat16), None, None
    scales = (torch.rand(num_blocks, block_size, num_kv_heads, generator=generator) + 0.5) / 64
    return (
        (keys * 40).round().clamp(-127, 127).to(torch.int8),
        (values * 40).round().clamp(-127, 127).to(torch.int8),
        scales.to(torch.float16),
        (scales * 1.5).to(torch.float16),
    )


def _attend(query, caches, table, lengths):
    keys, values, key_scale, value_scale = caches
    out = torch.empty_like(query)
    _KERNELS.paged_decode_attention(
        out, query, keys, values, table, lengths, 0.125, 0, key_scale, value_scale, None, 0
    )
    return out


@pytest.mark.parametrize("quantized", [False, True])
@pytest.mark.parametrize(
    "block_size, head_dim, first_length",
    [(16, 64, 37), (16, 64, 48), (16, 64, 3), (8, 32, 21), (16, 128, 100)],
)
def test_a_run_of_rows_gives_each_row_its_bits_alone(quantized, block_size, head_dim, first_length):
    generator = torch.Generator().manual_seed(first_length + head_dim)
    num_heads, num_kv_heads, max_blocks = 4, 2, 12
    caches = _cache(40, block_size, num_kv_heads, head_dim, quantized, generator)
    request_blocks = torch.randperm(40, generator=generator)[:max_blocks]
    other_blocks = torch.randperm(40, generator=generator)[:max_blocks]
    # Rows: another request; a run of five rows of one request (lengths L..L+4); a row with the
    # same blocks but not the next length (no run); another request with the next length.
    tables = [other_blocks] + [request_blocks] * 5 + [request_blocks, other_blocks]
    lengths = [29] + [first_length + i for i in range(5)] + [first_length + 2, 30]
    table = torch.stack(tables).to(torch.int64).contiguous()
    seq_lens = torch.tensor(lengths, dtype=torch.int64)
    query = torch.randn(len(lengths), num_heads, head_dim, generator=generator).to(torch.bfloat16)
    together = _attend(query, caches, table, seq_lens)
    for row in range(len(lengths)):
        alone = _attend(
            query[row : row + 1].contiguous(),
            caches,
            table[row : row + 1].contiguous(),
            seq_lens[row : row + 1].contiguous(),
        )
        assert torch.equal(together[row], alone[0]), row


def test_a_run_matches_a_float_reference():
    generator = torch.Generator().manual_seed(7)
    block_size, head_dim, num_heads, num_kv_heads = 16, 64, 4, 2
    keys, values, _, _ = _cache(8, block_size, num_kv_heads, head_dim, False, generator)
    blocks = torch.tensor([[5, 2, 7, 0]] * 3, dtype=torch.int64)
    lengths = torch.tensor([40, 41, 42], dtype=torch.int64)
    query = torch.randn(3, num_heads, head_dim, generator=generator).to(torch.bfloat16)
    out = _attend(query, (keys, values, None, None), blocks, lengths)
    # Dense keys/values of the request in token order: [tokens, kv heads, head_dim].
    dense_k = keys[blocks[0]].permute(0, 3, 1, 2).reshape(-1, num_kv_heads, head_dim).float()
    dense_v = values[blocks[0]].reshape(-1, num_kv_heads, head_dim).float()
    for row in range(3):
        n = int(lengths[row])
        k = dense_k[:n].repeat_interleave(num_heads // num_kv_heads, dim=1)
        v = dense_v[:n].repeat_interleave(num_heads // num_kv_heads, dim=1)
        scores = torch.einsum("hd,thd->ht", query[row].float() * 0.125, k)
        expected = torch.einsum("ht,thd->hd", scores.softmax(-1), v)
        torch.testing.assert_close(out[row].float(), expected, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("head_dim", [32, 48, 64, 128])
@pytest.mark.parametrize("group", [1, 3, 8, 9, 12])
def test_every_register_blocking_matches_a_float64_reference(dtype, head_dim, group):
    """Blocks of 16 with head_dim 32/64/128 take the register-blocked loops (queries in chunks,
    AVX2 or AVX-512 by the build), 48 the generic one; groups up to 12 cover every chunk size.
    Float caches must agree with float64 to float rounding, 16-bit ones to the output's."""
    generator = torch.Generator().manual_seed(head_dim * 100 + group)
    block_size, num_kv_heads = 16, 2
    num_heads = group * num_kv_heads
    keys = torch.randn(12, num_kv_heads, head_dim, block_size, generator=generator).to(dtype)
    values = torch.randn(12, block_size, num_kv_heads, head_dim, generator=generator).to(dtype)
    lengths = torch.tensor([1, 17, 100, 160], dtype=torch.int64)
    table = torch.stack([torch.randperm(12, generator=generator)[:10] for _ in lengths])
    query = torch.randn(len(lengths), num_heads, head_dim, generator=generator).to(dtype)
    scale = head_dim**-0.5
    out = torch.empty_like(query)
    _KERNELS.paged_decode_attention(
        out, query, keys, values, table, lengths, scale, 0, None, None, None, 0
    )
    for row, length in enumerate(lengths.tolist()):
        blocks = table[row]
        dense_k = keys[blocks].permute(0, 3, 1, 2).reshape(-1, num_kv_heads, head_dim)[:length]
        dense_v = values[blocks].reshape(-1, num_kv_heads, head_dim)[:length]
        k = dense_k.double().repeat_interleave(group, dim=1)
        v = dense_v.double().repeat_interleave(group, dim=1)
        scores = torch.einsum("hd,thd->ht", query[row].double() * scale, k)
        expected = torch.einsum("ht,thd->hd", scores.softmax(-1), v)
        tolerance = 1e-5 if dtype == torch.float32 else 1e-2
        torch.testing.assert_close(
            out[row].double(), expected, atol=tolerance, rtol=tolerance, msg=f"row {row}"
        )
