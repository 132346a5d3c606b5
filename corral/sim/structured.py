"""Grammar-constrained decoding in the simulator: which requests carry a grammar, when each
one's grammar is compiled, and what the per-step masks cost.

The engine (corral/structured/manager.py) hands a constrained request to the scheduler only once
its grammar is compiled, on one worker thread (`corral-grammar`), with compiles cached by the
constraint (an LRU of 256): a grammar already in the cache is ready at once, a repeat that waits
behind its own first compile on the thread finds it cached by then. GrammarCompiles plays that
thread and cache on the virtual clock, one per instance (each engine has its own cache). The
scheduler itself is unchanged: a constrained request only reaches it later, and each step that
samples constrained rows costs more (corral/sim/grammar_step.py).

A request's grammar is drawn once, seeded, in the workload's order: with probability `fraction`
one of `num_grammars` distinct grammars, uniformly; else none. Defaults are the engine's measured
figures for the JSON workload of docs/structured-output-benchmarks.md (CPU, 4,096-token
vocabulary): compile 2.33 ms cold and 57 us cached, the sampling stage 13.4 us longer per
constrained row at batch 32 (428 us per step over 32 rows).
"""

from __future__ import annotations

import heapq
import math
import random
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from corral.workloads.spec import RequestSpec

DEFAULT_COMPILE_COLD_S = 2.33e-3
DEFAULT_COMPILE_CACHED_S = 57e-6
DEFAULT_MASK_S_PER_ROW = 13.4e-6
# StructuredOutputManager's defaults: one compile thread; GrammarBackend's LRU size.
DEFAULT_NUM_COMPILE_THREADS = 1
DEFAULT_MAX_NUM_CACHED = 256


def _check_seconds(name: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class StructuredSimConfig:
    """Constrained decoding in a simulated workload (seconds throughout)."""

    fraction: float  # share of requests that carry a grammar, in [0, 1]
    num_grammars: int = 1  # distinct grammars those requests draw from, uniformly
    compile_cold_s: float = DEFAULT_COMPILE_COLD_S  # a grammar's first compile on an instance
    compile_cached_s: float = DEFAULT_COMPILE_CACHED_S  # a compile-cache hit
    mask_s_per_row: float = DEFAULT_MASK_S_PER_ROW  # fill + apply, per constrained sampled row
    mask_s_per_step: float = 0.0  # fixed, per step that samples any constrained row
    num_compile_threads: int = DEFAULT_NUM_COMPILE_THREADS
    max_num_cached: int = DEFAULT_MAX_NUM_CACHED
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"structured fraction must be in [0, 1], got {self.fraction!r}")
        if self.num_grammars < 1:
            raise ValueError(f"number of distinct grammars must be >= 1, got {self.num_grammars}")
        _check_seconds("grammar compile time (cold)", self.compile_cold_s)
        _check_seconds("grammar compile time (cached)", self.compile_cached_s)
        _check_seconds("grammar mask time per row", self.mask_s_per_row)
        _check_seconds("grammar mask time per step", self.mask_s_per_step)
        if self.num_compile_threads < 1:
            raise ValueError(f"compile threads must be >= 1, got {self.num_compile_threads}")
        if self.max_num_cached < 1:
            raise ValueError(f"compile cache size must be >= 1, got {self.max_num_cached}")

    def assign(self, specs: Iterable[RequestSpec]) -> dict[str, int]:
        """request id -> the index of its grammar, for the requests that carry one."""
        rng = random.Random(self.seed)
        grammars: dict[str, int] = {}
        for spec in specs:
            if rng.random() < self.fraction:
                grammars[spec.request_id] = rng.randrange(self.num_grammars)
        return grammars

    def describe(self) -> dict:
        return {
            "fraction": self.fraction,
            "num_grammars": self.num_grammars,
            "compile_cold_ms": self.compile_cold_s * 1e3,
            "compile_cached_ms": self.compile_cached_s * 1e3,
            "mask_us_per_row": self.mask_s_per_row * 1e6,
            "mask_us_per_step": self.mask_s_per_step * 1e6,
        }


class GrammarCompiles:
    """One instance's compile thread(s) and compile cache on the virtual clock. Submissions come
    in time order (the simulator's clock never goes back)."""

    def __init__(self, config: StructuredSimConfig) -> None:
        self.config = config
        self._free_s = [0.0] * config.num_compile_threads  # heap: when each thread is free
        # grammar -> when its compile finished (or will), least recently used first
        self._cache: OrderedDict[int, float] = OrderedDict()
        self.num_submitted = 0
        self.num_cold = 0
        self.num_cached = 0
        self.wait_s = 0.0  # summed over submissions: submission to ready
        self.max_wait_s = 0.0

    def submit(self, grammar: int, now: float) -> float:
        """When a request submitted at `now` with this grammar is ready for the scheduler."""
        config, cache = self.config, self._cache
        self.num_submitted += 1
        done_s = cache.get(grammar)
        if done_s is not None and done_s <= now:  # cached: no thread (manager.submit)
            cache.move_to_end(grammar)
            self.num_cached += 1
            return self._ready(now, now + config.compile_cached_s)
        start_s = max(now, heapq.heappop(self._free_s))
        done_s = cache.get(grammar)
        if done_s is not None and done_s <= start_s:  # its first compile finished meanwhile
            cache.move_to_end(grammar)
            self.num_cached += 1
            end_s = start_s + config.compile_cached_s
        else:  # (a compile of it still running on another thread compiles it twice)
            self.num_cold += 1
            end_s = start_s + config.compile_cold_s
            cache[grammar] = end_s
            cache.move_to_end(grammar)
            while len(cache) > config.max_num_cached:
                cache.popitem(last=False)
        heapq.heappush(self._free_s, end_s)
        return self._ready(now, end_s)

    def _ready(self, now: float, ready_s: float) -> float:
        wait_s = ready_s - now
        self.wait_s += wait_s
        if wait_s > self.max_wait_s:
            self.max_wait_s = wait_s
        return ready_s
