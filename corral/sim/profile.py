"""Profile the real engine on this machine for the `profiled` cost model.

The engine (corral.engine.llm_engine.LLMEngine) runs a grid of batch shapes: batched prefills,
prefills after a cached prefix, decode batches of several sizes at several context lengths, and
mixed steps (a prefill joining running decodes). Each engine.step() is timed whole (schedule,
forward, sample, output processing), as a replayed request experiences it, and paired with the
step's BatchShape (counted by a BatchShapeCounter shadowing the real executor). A regression is then
fitted (ProfiledCostModel.fit) and saved with the samples.
"""

from __future__ import annotations

import itertools
import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from corral.config import EngineConfig
from corral.core.batch_shape import BatchShape, BatchShapeCounter
from corral.core.messages import ModelOutput, SchedulerOutput
from corral.sim.cost.profiled import ProfiledCostModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ProfileGrid:
    decode_batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    context_lens: tuple[int, ...] = (32, 256, 768)
    prefill_lens: tuple[int, ...] = (16, 64, 128, 256, 512, 1024)
    prefix_lens: tuple[int, ...] = (0, 512)
    mixed_decodes: tuple[int, ...] = (4, 16)
    mixed_prefill_lens: tuple[int, ...] = (32, 128, 512)
    decode_steps: int = 6
    repeats: int = 2


QUICK_GRID = ProfileGrid(
    decode_batch_sizes=(1, 4, 16),
    context_lens=(32, 256),
    prefill_lens=(16, 128, 512),
    prefix_lens=(0, 256),
    mixed_decodes=(4,),
    mixed_prefill_lens=(64, 256),
    decode_steps=4,
    repeats=1,
)


class ShapeRecorder:
    """Stands in for the engine's executor: forwards every call, and notes each step's shape."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.counter = BatchShapeCounter()
        self.last: BatchShape | None = None
        # When a list, every step's shape is appended (None for an empty step).
        self.shapes: list[BatchShape | None] | None = None

    def execute(self, scheduler_output: SchedulerOutput) -> ModelOutput:
        self.last, _ = self.counter.count(scheduler_output)
        if self.shapes is not None:
            self.shapes.append(self.last)
        return self.inner.execute(scheduler_output)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


# How a step is timed: wall time, or this process's CPU time (on a machine shared with other
# jobs, CPU time of a one-thread engine estimates the step's uncontended wall time).
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


class EngineProfiler:
    def __init__(
        self, config: EngineConfig, seed: int = 0, clock: str = "wall", idle_gap_s: float = 0.0
    ) -> None:
        if clock not in CLOCKS:
            raise ValueError(f"clock must be one of {sorted(CLOCKS)}, got {clock!r}")
        if idle_gap_s < 0:
            raise ValueError(f"idle_gap_s must be >= 0, got {idle_gap_s}")
        self.timer = CLOCKS[clock]
        # A pause before every recorded step: a served engine idles between arrivals, and on a
        # shared CPU its weights and threads are cold again when the next step starts.
        self.idle_gap_s = idle_gap_s
        from corral.engine.llm_engine import LLMEngine

        self.engine = LLMEngine(config)
        self.recorder = ShapeRecorder(self.engine.core.executor)
        self.engine.core.executor = self.recorder
        self.rng = random.Random(seed)
        self.samples: list[tuple[BatchShape, float]] = []
        self._ids = itertools.count()
        self._vocab = self.engine.arch.vocab_size

    def _params(self, max_tokens: int):
        from corral.sampling_params import OutputKind, SamplingParams

        # Streamed deltas without text, as a server (and benchmarks/sim_replay.py) asks.
        return SamplingParams(
            temperature=0.0,
            max_tokens=max_tokens,
            ignore_eos=True,
            detokenize=False,
            output_kind=OutputKind.DELTA,
        )

    def _prompt(self, num_tokens: int) -> list[int]:
        return [self.rng.randrange(1, self._vocab) for _ in range(num_tokens)]

    def _add(self, prompt: list[int], max_tokens: int) -> str:
        request_id = f"profile-{next(self._ids)}"
        self.engine.add_request(request_id, {"prompt_token_ids": prompt}, self._params(max_tokens))
        return request_id

    def _step(self, record: bool = True) -> None:
        if record and self.idle_gap_s:
            time.sleep(self.idle_gap_s)
        start = self.timer()
        self.engine.step()
        elapsed = self.timer() - start
        if record and self.recorder.last is not None:
            self.samples.append((self.recorder.last, elapsed))

    def _drain(self, record: bool = True, max_steps: int | None = None) -> None:
        steps = 0
        while self.engine.has_unfinished_requests() and (max_steps is None or steps < max_steps):
            self._step(record)
            steps += 1

    def run(self, grid: ProfileGrid, progress: Callable[[str], None] | None = None) -> None:
        """Measure the grid; samples accumulate in self.samples."""
        say = progress or (lambda message: None)
        budget = self.engine.config.scheduler.max_num_batched_tokens
        max_len = self.engine.max_model_len
        self._add(self._prompt(32), 4)
        self._drain(record=False)  # warm-up
        for _ in range(grid.repeats):
            for prefix_len in grid.prefix_lens:
                for prefill_len in grid.prefill_lens:
                    if prefill_len > budget or prefix_len + prefill_len + 1 > max_len:
                        continue
                    prefix = self._prompt(prefix_len)
                    if prefix_len:
                        self._add(prefix + self._prompt(1), 1)
                        self._drain(record=False)
                    self._add(prefix + self._prompt(prefill_len), 1)
                    self._drain()
            say(f"prefill points: {len(self.samples)} samples")
            for context in grid.context_lens:
                for batch in grid.decode_batch_sizes:
                    if context + grid.decode_steps + 1 > max_len:
                        continue
                    for _ in range(batch):
                        self._add(self._prompt(context), grid.decode_steps + 1)
                    self._drain()
            say(f"decode points: {len(self.samples)} samples")
            for num_decodes in grid.mixed_decodes:
                for prefill_len in grid.mixed_prefill_lens:
                    if prefill_len > budget - num_decodes:
                        continue
                    running = [
                        self._add(self._prompt(64), max_len - 64) for _ in range(num_decodes)
                    ]
                    self._drain(max_steps=-(-64 * num_decodes // budget) + 2)
                    self._add(self._prompt(prefill_len), 1)
                    self._drain(max_steps=3)
                    self.engine.abort_request(running)
                    self._drain(record=False)
            say(f"mixed points: {len(self.samples)} samples")


def profile_engine(
    config: EngineConfig,
    grid: ProfileGrid,
    progress: Callable[[str], None] | None = None,
    clock: str = "wall",
    idle_gap_s: float = 0.0,
    fit_target: str = "mean",
) -> ProfiledCostModel:
    """Run the grid on the real engine and fit the profiled cost model (with its metadata);
    idle_gap_s pauses before every timed step (see EngineProfiler); fit_target: see
    ProfiledCostModel.fit."""
    profiler = EngineProfiler(config, seed=config.model.seed, clock=clock, idle_gap_s=idle_gap_s)
    engine = profiler.engine
    start = time.perf_counter()
    profiler.run(grid, progress)
    from corral.engine.step_log import describe_engine

    core = engine.core
    arch = asdict(engine.arch)
    metadata = {
        "engine": describe_engine(
            engine.config, engine.model_dir, engine.arch, core.executor.inner, engine.max_model_len
        ),
        "arch": arch,
        "grid": asdict(grid),
        "clock": clock,
        "idle_gap_s": idle_gap_s,
        "profile_wall_s": time.perf_counter() - start,
    }
    logger.info("fitting %d samples", len(profiler.samples))
    return ProfiledCostModel.fit(profiler.samples, metadata=metadata, target=fit_target)
