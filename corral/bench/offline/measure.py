"""Timed runs of an offline backend: a whole workload at once (throughput), or one batch
repeated (latency)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from corral.bench.offline.backends import OfflineBackend
from corral.bench.spec_decode import SpecDecodeCounts
from corral.workloads import Workload
from corral.workloads.tokens import synthetic_token_ids


@dataclass(frozen=True, slots=True)
class ThroughputResult:
    backend: str
    dtype: str
    num_requests: int
    num_prompt_tokens: int
    num_output_tokens: int
    elapsed_s: float
    # Speculative decoding over the timed part (None: the backend does not speculate).
    spec_decode: SpecDecodeCounts | None = None

    @property
    def requests_per_s(self) -> float:
        return self.num_requests / self.elapsed_s

    @property
    def output_tokens_per_s(self) -> float:
        return self.num_output_tokens / self.elapsed_s

    @property
    def total_tokens_per_s(self) -> float:
        return (self.num_prompt_tokens + self.num_output_tokens) / self.elapsed_s

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {
            "requests_per_s": self.requests_per_s,
            "output_tokens_per_s": self.output_tokens_per_s,
            "total_tokens_per_s": self.total_tokens_per_s,
            "spec_decode": _spec_dict(self.spec_decode),
        }

    def describe(self) -> str:
        return (
            f"{self.backend} ({self.dtype}): {self.requests_per_s:.2f} req/s, "
            f"{self.output_tokens_per_s:.1f} output tok/s, {self.total_tokens_per_s:.1f} total "
            f"tok/s ({self.elapsed_s:.1f} s)" + _spec_line(self.spec_decode)
        )


def _spec_dict(counts: SpecDecodeCounts | None) -> dict[str, Any] | None:
    return counts.to_dict() if counts is not None else None


def _spec_line(counts: SpecDecodeCounts | None) -> str:
    return f"\n  speculative decoding: {counts.describe()}" if counts is not None else ""


def _spec_since(
    backend: OfflineBackend, before: SpecDecodeCounts | None
) -> SpecDecodeCounts | None:
    after = backend.spec_decode_counts()
    return after - before if after is not None and before is not None else None


def workload_requests(workload: Workload) -> tuple[list[list[int]], list[int]]:
    """(prompt token ids, output lengths) of every spec, in workload order."""
    prompts = [workload.token_ids(spec) for spec in workload]
    return prompts, [spec.num_output_tokens for spec in workload]


def measure_throughput(
    backend: OfflineBackend, name: str, prompts: Sequence[list[int]], output_lens: Sequence[int]
) -> ThroughputResult:
    """Warm up, then time one generate() over all requests (submitted at once)."""
    backend.warmup()
    spec_before = backend.spec_decode_counts()
    start = time.perf_counter()
    num_output = backend.generate(prompts, output_lens)
    elapsed = time.perf_counter() - start
    num_prompt = sum(len(p) for p in prompts)
    spec = _spec_since(backend, spec_before)
    return ThroughputResult(
        name, backend.dtype_name, len(prompts), num_prompt, num_output, elapsed, spec
    )


@dataclass(frozen=True, slots=True)
class LatencyResult:
    backend: str
    dtype: str
    batch_size: int
    input_len: int
    output_len: int
    iteration_s: list[float]
    # Speculative decoding over the timed iterations (None: the backend does not speculate).
    spec_decode: SpecDecodeCounts | None = None

    def percentiles_ms(self) -> dict[str, float]:
        ms = np.asarray(self.iteration_s) * 1e3
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        return {
            "mean": float(ms.mean()),
            "median": float(p50),
            "p90": float(p90),
            "p99": float(p99),
            "max": float(ms.max()),
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {
            "latency_ms": self.percentiles_ms(),
            "spec_decode": _spec_dict(self.spec_decode),
        }

    def describe(self) -> str:
        stats = self.percentiles_ms()
        tokens_per_s = self.batch_size * self.output_len / (stats["mean"] / 1e3)
        cells = " ".join(f"{name} {value:.1f}" for name, value in stats.items())
        return (
            f"{self.backend} ({self.dtype}), batch {self.batch_size} x ({self.input_len} in, "
            f"{self.output_len} out), {len(self.iteration_s)} iterations: latency ms {cells}; "
            f"{tokens_per_s:.1f} output tok/s at the mean" + _spec_line(self.spec_decode)
        )


def latency_batch(
    batch_size: int, input_len: int, vocab_size: int, seed: int = 0
) -> list[list[int]]:
    """batch_size distinct synthetic prompts of input_len ids (no shared prefix)."""
    for name, value in (("batch size", batch_size), ("input length", input_len)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    return [synthetic_token_ids(seed + index, input_len, vocab_size) for index in range(batch_size)]


def measure_latency(
    backend: OfflineBackend,
    name: str,
    prompts: Sequence[list[int]],
    output_len: int,
    num_iters: int,
    num_warmup_iters: int = 1,
) -> LatencyResult:
    """Run the same batch num_warmup_iters times untimed, then num_iters times timed."""
    if output_len < 1 or num_iters < 1 or num_warmup_iters < 0:
        raise ValueError(
            f"need output length >= 1, iterations >= 1 and warm-up iterations >= 0; got "
            f"{output_len}, {num_iters}, {num_warmup_iters}"
        )
    lens = [output_len] * len(prompts)
    for _ in range(num_warmup_iters):
        backend.generate(prompts, lens)
    times = []
    spec_before = backend.spec_decode_counts()
    for _ in range(num_iters):
        start = time.perf_counter()
        backend.generate(prompts, lens)
        times.append(time.perf_counter() - start)
    spec = _spec_since(backend, spec_before)
    return LatencyResult(
        name, backend.dtype_name, len(prompts), len(prompts[0]), output_len, times, spec
    )
