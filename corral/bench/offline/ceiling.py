"""Single-request decode speed against the machine's memory-bandwidth ceiling (every decode step
reads all weights once, so tokens/s cannot exceed read bandwidth / weight bytes)."""

from __future__ import annotations

import time
from typing import Any


def read_bandwidth_gb_s(num_bytes: int, repeats: int = 7) -> float:
    """Best read bandwidth over a buffer the size of the weights (a float32 sum)."""
    import torch

    buffer = torch.ones(num_bytes // 4, dtype=torch.float32)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        buffer.sum()
        best = min(best, time.perf_counter() - start)
    return num_bytes / best / 1e9


def single_request_decode(llm: Any, num_tokens: int) -> float:
    """Decode tokens/s of one request on a corral LLM (time from its first to its last token)."""
    from corral import SamplingParams
    from corral.sampling_params import OutputKind

    if num_tokens < 2:
        raise ValueError(f"need at least 2 decode tokens, got {num_tokens}")
    engine = llm.engine
    params = SamplingParams(
        temperature=0,
        max_tokens=num_tokens,
        ignore_eos=True,
        detokenize=False,
        output_kind=OutputKind.DELTA,
    )
    engine.add_request("single", {"prompt_token_ids": list(range(100, 132))}, params)
    times: list[float] = []
    while engine.has_unfinished_requests():
        for output in engine.step():
            times += [time.perf_counter()] * len(output.outputs[0].token_ids)
    return (len(times) - 1) / (times[-1] - times[0])
