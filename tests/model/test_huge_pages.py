"""The weights and the KV pool on 2 MiB pages (corral/model/huge_pages.py): tensors move in place
(identity, shape and values kept) into one 2 MiB-aligned arena, and a model on it generates
exactly what it does on ordinary pages. Whether the kernel backs the arena with huge pages is its
own business (transparent huge pages may be off in CI); the figures are in docs/performance.md."""

from __future__ import annotations

import pytest
import torch

from corral.cli import build_parser
from corral.config import ModelConfig
from corral.engine.engine_args import engine_config_from_args
from corral.llm import LLM, engine_config_from_kwargs
from corral.model import huge_pages
from corral.model.huge_pages import (
    HUGE_PAGE_BYTES,
    huge_page_arena,
    huge_page_zeros,
    move_to_huge_pages,
    weight_tensors,
)
from tests.model.test_layer_loop import _run as run_prompts


def test_an_arena_starts_on_a_huge_page():
    for num_bytes in (1, 4096, HUGE_PAGE_BYTES + 1):
        arena = huge_page_arena(num_bytes)
        assert arena.numel() == num_bytes and arena.data_ptr() % HUGE_PAGE_BYTES == 0
    zeros = huge_page_zeros((3, 5, 7), torch.bfloat16)
    assert zeros.shape == (3, 5, 7) and zeros.dtype == torch.bfloat16 and not zeros.any()


def test_tensors_move_in_place_once_each(monkeypatch):
    monkeypatch.setattr(huge_pages, "MIN_MOVED_BYTES", 256)
    big = torch.randn(64, 48).to(torch.bfloat16)
    other = torch.arange(300, dtype=torch.int16).to(torch.int8)
    small = torch.randn(4)  # under the threshold
    strided = torch.randn(32, 32).t()  # not contiguous
    expected = [t.clone() for t in (big, other, small, strided)]
    old_ptrs = [t.data_ptr() for t in (big, other, small, strided)]
    moved = move_to_huge_pages([big, other, big, small, strided])
    assert moved == 64 * 48 * 2 + 320  # big once, and other rounded up to 64 bytes
    for tensor, value in zip((big, other, small, strided), expected):
        assert torch.equal(tensor, value) and tensor.dtype == value.dtype
    assert big.data_ptr() != old_ptrs[0] and big.data_ptr() % HUGE_PAGE_BYTES == 0
    assert other.data_ptr() == big.data_ptr() + 64 * 48 * 2
    assert small.data_ptr() == old_ptrs[2] and strided.data_ptr() == old_ptrs[3]
    big.add_(1)  # the moved tensor is an ordinary tensor over the arena
    assert torch.equal(big, (expected[0] + 1))


@pytest.mark.parametrize("family", ["llama", "qwen2"])  # untied head; qkv biases, tied head
def test_a_model_on_huge_pages_generates_what_it_does_on_small_ones(
    tiny_model_factory, monkeypatch, family
):
    monkeypatch.setattr(huge_pages, "MIN_MOVED_BYTES", 0)
    monkeypatch.setattr(huge_pages, "is_available", lambda: True)
    path = tiny_model_factory(family)
    on_huge, model = run_prompts(path, True, "bfloat16", huge_pages=True)
    tensors = weight_tensors(model)
    assert len({t.untyped_storage().data_ptr() for t in tensors}) == 1  # one arena holds all
    assert min(t.data_ptr() for t in tensors) % HUGE_PAGE_BYTES == 0
    on_small, plain = run_prompts(path, True, "bfloat16", huge_pages=False)
    assert len({t.untyped_storage().data_ptr() for t in weight_tensors(plain)}) > 1
    assert on_huge == on_small


def test_the_kv_pool_starts_on_a_huge_page(tiny_model_factory):
    path = str(tiny_model_factory("llama"))
    llm = LLM(model=path, dtype="bfloat16", num_blocks=64, block_size=16)
    assert llm.engine.executor.storage.values.data_ptr() % HUGE_PAGE_BYTES == 0


def test_the_switch():
    assert ModelConfig().huge_pages
    assert not engine_config_from_kwargs(huge_pages=False).model.huge_pages  # LLM(huge_pages=)
    parser = build_parser("serve")
    args = parser.parse_args(["serve", "--no-huge-pages"])
    assert not engine_config_from_args(args).model.huge_pages
    assert engine_config_from_args(parser.parse_args(["serve"])).model.huge_pages
