from __future__ import annotations

import logging

import pytest

from corral import LLM
from corral.config import CacheConfig
from corral.memory_budget import parse_memory_budget


@pytest.mark.parametrize(
    "text, expected",
    [
        ("0.25", 0.25),
        (0.5, 0.5),
        ("512MiB", 512 * 2**20),
        ("2GB", 2e9),
        ("1e6", 1e6),
        ("3 KiB", 3072.0),
    ],
)
def test_memory_budget_parsing(text, expected):
    assert parse_memory_budget(text) == expected


@pytest.mark.parametrize("bad", ["-1", "0", "lots", "12 parsecs"])
def test_bad_budgets_are_refused_with_the_value(bad):
    with pytest.raises(ValueError) as error:
        CacheConfig(kv_cache_memory=bad)
    assert repr(bad) in str(error.value)


def test_pool_is_sized_from_a_byte_budget_and_logged(tiny_model, caplog):
    caplog.set_level(logging.INFO, logger="corral.model.executor")
    llm = LLM(model=str(tiny_model), dtype="float32", kv_cache_memory="1MiB", block_size=16)
    arch = llm.engine.arch
    bytes_per_block = 2 * arch.num_layers * arch.num_kv_heads * arch.head_dim * 4 * 16
    assert llm.engine.kv_manager.num_blocks == 2**20 // bytes_per_block
    assert f"{2**20 // bytes_per_block} blocks x 16 tokens" in caplog.text


def test_fraction_budget_is_capped_at_what_requests_could_use(tiny_model):
    llm = LLM(
        model=str(tiny_model),
        dtype="float32",
        kv_cache_memory=0.5,
        max_num_seqs=2,
        max_model_len=64,
        block_size=16,
    )
    assert llm.engine.kv_manager.num_blocks == 2 * 64 // 16


def test_a_budget_below_one_block_is_refused(tiny_model):
    with pytest.raises(ValueError, match="less than one block"):
        LLM(model=str(tiny_model), dtype="float32", kv_cache_memory="100B")
