"""Replay a workload against the real engine in process (no HTTP server yet).

Each request is added to corral.engine.llm_engine.LLMEngine once its arrival time has passed
(checked before every step, as a server's engine loop does), the engine steps while it has work,
and every streamed token's time is recorded. Returns the same RequestRecords the simulator
produces, so corral.workloads.metrics summarizes both identically.

Two clocks:
- wall: real time; requests arrive while steps run; the honest measurement on a quiet machine;
- cpu: a clock advanced by each engine.step()'s process CPU time, jumping over idle gaps to the
  next arrival. On a machine shared with other jobs, a one-thread engine's CPU time estimates the
  wall time it would take alone, so the replay is not distorted by the neighbours' load.
"""

from __future__ import annotations

import time
from array import array

from corral.sampling_params import OutputKind, SamplingParams
from corral.workloads.metrics import RequestRecord
from corral.workloads.spec import Workload


class _WallClock:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def now(self) -> float:
        return time.perf_counter() - self.start

    def step(self, engine) -> tuple[list, float, float]:
        start = self.now()
        outputs = engine.step()
        end = self.now()
        return outputs, end, end - start

    def idle_until(self, when_s: float) -> None:
        time.sleep(max(0.0, when_s - self.now()))


class _CPUClock:
    def __init__(self) -> None:
        self.time_s = 0.0

    def now(self) -> float:
        return self.time_s

    def step(self, engine) -> tuple[list, float, float]:
        start = time.process_time()
        outputs = engine.step()
        elapsed = time.process_time() - start
        self.time_s += elapsed
        return outputs, self.time_s, elapsed

    def idle_until(self, when_s: float) -> None:
        self.time_s = max(self.time_s, when_s)


def stamp_outputs(records: dict[str, RequestRecord], outputs: list, stamp: float) -> None:
    """Count one engine step's streamed (DELTA) outputs into their requests' records, each new
    chunk at time `stamp`."""
    for output in outputs:
        num_new = len(output.outputs[0].token_ids)
        if num_new:
            record = records[output.request_id]
            record.num_output_tokens += num_new
            record.token_times_s.append(stamp)  # type: ignore[attr-defined]


def replay(
    engine, workload: Workload, clock: str = "wall"
) -> tuple[list[RequestRecord], float, list[float]]:
    """Run the workload on engine (an LLMEngine); returns (records, duration in clock seconds,
    the duration of every engine step in order)."""
    step_times: list[float] = []
    specs = list(workload.specs)
    prompts = [workload.token_ids(spec) for spec in specs]  # built before the clock starts
    records: dict[str, RequestRecord] = {}
    params: dict[int, SamplingParams] = {}
    next_index = 0
    timer = {"wall": _WallClock, "cpu": _CPUClock}[clock]()
    while next_index < len(specs) or engine.has_unfinished_requests():
        now = timer.now()
        while next_index < len(specs) and specs[next_index].arrival_time_s <= now:
            spec = specs[next_index]
            max_tokens = spec.num_output_tokens
            if max_tokens not in params:
                params[max_tokens] = SamplingParams(
                    temperature=0.0,
                    max_tokens=max_tokens,
                    ignore_eos=True,
                    detokenize=False,
                    output_kind=OutputKind.DELTA,
                )
            engine.add_request(
                spec.request_id, {"prompt_token_ids": prompts[next_index]}, params[max_tokens]
            )
            records[spec.request_id] = RequestRecord(
                spec.request_id, spec.arrival_time_s, spec.num_prompt_tokens, 0, array("d")
            )
            next_index += 1
        if engine.has_unfinished_requests():
            outputs, stamp, elapsed = timer.step(engine)
            step_times.append(elapsed)
            stamp_outputs(records, outputs, stamp)
        elif next_index < len(specs):
            timer.idle_until(specs[next_index].arrival_time_s)
    return [records[spec.request_id] for spec in specs], timer.now(), step_times
