"""Tensor parallelism's start-up checks on the engine's configuration (torch-free).

The degree itself is ModelConfig.tensor_parallel_size (`--tensor-parallel-size`, `LLM(...,
tensor_parallel_size=N)`); the sharding and the worker processes live in
corral/model/tensor_parallel.py. This module refuses, before anything is loaded, the features
that do not run on a tensor-parallel engine yet, naming the flag of each.
"""

from __future__ import annotations

from typing import Any


def check_tensor_parallel(config: Any) -> None:
    """Raise ValueError when config (an EngineConfig) asks for tensor parallelism with a
    feature that does not support it yet, or for expert parallelism without it. The model's
    own shape (heads, intermediate size, experts; expert parallelism on a dense model) is
    checked when it is loaded (corral.model.tensor_parallel.check_shardable)."""
    size = config.model.tensor_parallel_size
    if size < 1:
        raise ValueError(f"tensor_parallel_size must be >= 1, got {size}")
    if size == 1:
        if config.model.enable_expert_parallel:
            raise ValueError(
                "enable_expert_parallel (--enable-expert-parallel) splits a mixture-of-experts "
                "model's experts over the tensor-parallel ranks, and tensor_parallel_size is 1: "
                "set --tensor-parallel-size 2 or more"
            )
        return
    refused = []
    if config.cache.disk_cache_dir is not None:
        refused.append("a disk KV tier (--disk-cache-dir)")
    if config.kv_transfer.is_enabled:
        refused.append("KV transfer between engines (--kv-role)")
    if config.speculative.is_enabled:
        refused.append("speculative decoding (--speculative-method)")
    if config.lora.is_enabled:
        refused.append("multi-LoRA (--enable-lora)")
    if refused:
        raise ValueError(
            f"--tensor-parallel-size {size} with {' and '.join(refused)} is not supported yet "
            "(each rank holds a slice of every block's KV heads and of the weights: these "
            "features read or write whole blocks or weights on one rank only); use "
            "--tensor-parallel-size 1 for them"
        )
