"""StepLog: one JSON line per engine step, for fitting the simulator's cost model to real serving.

`corral serve --step-log PATH` (or EngineConfig.step_log_path) appends to PATH:

- a header line: {"kind": "corral-step-log", "version": 1, "engine": {...}, "arch": {...}};
- per step: {"t": start, "s": seconds, "gap": seconds since the previous step ended (null for
  the first), "busy": whether the previous step left requests unfinished (then the gap is the
  loop's own overhead, not idle time), "b": the step's BatchShape as a list};
- per request, at its first token: {"id": its request id, "arrival": the frontend's arrival
  time, "add": when the core took it, "first": when the step that produced its first token
  ended, "prompt": its number of prompt tokens} (the engine's own view of the request's TTFT and
  where it went);
- per preemption: {"preempt": the request id, "t": when, "mode": "recompute" or "swap", "held":
  the computed tokens it held}, and when it is scheduled again: {"resume": the request id, "t":
  the start of that step, "computed": the tokens it resumes with (a swap-in or a prefix-cache
  hit)}; request_timeline() gathers one request's records, so that a slow request can be
  explained (how long it queued, when it was preempted and for how long).

Times are time.monotonic() seconds, one clock for every process on the machine, so the frontend's
arrival stamps and the core's step stamps compare. `corral simulate profile --from-step-log`
fits a `profiled` cost model to such logs: steps measured in the serving regime itself (the HTTP
frontend and the load generator sharing the CPU, idle gaps between arrivals), where a profile
taken in a tight loop is optimistic.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from corral.core.batch_shape import BatchShapeCounter
from corral.core.messages import SchedulerOutput

STEP_LOG_KIND = "corral-step-log"
STEP_LOG_VERSION = 1


def describe_engine(
    config: Any, model_dir: str | Path, arch: Any, executor: Any, max_model_len: int
) -> dict[str, Any]:
    """The engine settings a step profile depends on (for a profile's or a step log's header)."""
    import torch

    model = executor.model
    return {
        "model": str(model_dir),
        "dtype": str(model.dtype).replace("torch.", ""),
        "dtype_bytes": model.dtype.itemsize,
        "device": str(executor.device),
        "num_threads": torch.get_num_threads(),
        "block_size": config.cache.block_size,
        "num_blocks": executor.num_blocks,
        "max_model_len": max_model_len,
        "max_num_seqs": config.scheduler.max_num_seqs,
        "max_num_batched_tokens": config.scheduler.max_num_batched_tokens,
        "label": f"{Path(model_dir).name}-{executor.device}",
    }


class StepLog:
    """Appends the engine's steps to a JSON-lines file (see the module docstring)."""

    def __init__(self, path: str | Path, engine: dict[str, Any], arch: Any) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", buffering=1 << 16)
        # Counts each step's shape exactly as the simulator's executor does.
        self._shapes = BatchShapeCounter()
        self._last_end: float | None = None
        self._busy = False
        # request id -> (arrival, added, number of prompt tokens), until its first token.
        self._waiting_first: dict[str, tuple[float, float, int]] = {}
        # Preempted requests not scheduled again yet.
        self._preempted: set[str] = set()
        header = {"kind": STEP_LOG_KIND, "version": STEP_LOG_VERSION, "engine": engine}
        self._write(header | {"arch": asdict(arch)})

    def _write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")

    def request_added(self, request_id: str, arrival_time: float, num_prompt_tokens: int) -> None:
        self._waiting_first[request_id] = (arrival_time, time.monotonic(), num_prompt_tokens)

    def requests_finished(self, request_ids: Iterable[str]) -> None:
        for request_id in request_ids:
            self._waiting_first.pop(request_id, None)
            self._preempted.discard(request_id)

    def step(
        self,
        scheduler_output: SchedulerOutput,
        start: float,
        end: float,
        has_work: bool,
        updated_request_ids: Iterable[str] = (),
    ) -> None:
        """Record one step that ran from start to end (time.monotonic()); has_work: whether
        requests remain unfinished after it; updated_request_ids: those it produced tokens for."""
        waiting = self._waiting_first
        if waiting:
            for request_id in updated_request_ids:
                first = waiting.pop(request_id, None)
                if first is not None:
                    self._write({"id": request_id, "arrival": first[0], "add": first[1],
                                 "first": end, "prompt": first[2]})  # fmt: skip
        if scheduler_output.preemptions or self._preempted:
            self._preemptions(scheduler_output, start)
        shape, _ = self._shapes.count(scheduler_output)
        if shape is not None:
            gap = None if self._last_end is None else start - self._last_end
            self._write({"t": start, "s": end - start, "gap": gap, "busy": self._busy,
                         "b": list(shape)})  # fmt: skip
            self._last_end = end
            self._busy = has_work
        if not has_work:
            self._file.flush()  # idle now: the file is current whenever the engine is

    def _preemptions(self, scheduler_output: SchedulerOutput, start: float) -> None:
        """The step's preemptions, then the preempted requests it schedules again."""
        for request_id, preemption in (scheduler_output.preemptions or {}).items():
            record: dict[str, Any] = {"preempt": request_id, "t": start}
            if preemption is not None:
                record |= {"t": preemption.start_s, "mode": preemption.detail,
                           "held": preemption.num_tokens}  # fmt: skip
            self._write(record)
            self._preempted.add(request_id)
        preempted = self._preempted
        for new in scheduler_output.new_requests:
            if new.request_id in preempted:
                preempted.discard(new.request_id)
                self._write({"resume": new.request_id, "t": start,
                             "computed": new.num_computed_tokens})  # fmt: skip

    def close(self) -> None:
        self._file.close()


def read_step_log(path: str | Path) -> tuple[dict[str, Any], list[dict], list[dict]]:
    """(header, step records, request records) of a step log; ValueError if it is not one.
    A log appended to by several runs keeps the first header (the runs must share settings)."""
    header: dict[str, Any] | None = None
    steps: list[dict] = []
    requests: list[dict] = []
    with Path(path).open() as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number} is not JSON: {error}") from None
            if "kind" in record:
                if record["kind"] != STEP_LOG_KIND:
                    raise ValueError(f"{path}:{number} is not a corral step log header")
                if header is None:
                    header = record
                elif record.get("engine") != header.get("engine"):
                    raise ValueError(
                        f"{path}:{number}: a second run with other engine settings "
                        f"({record.get('engine')} vs {header.get('engine')})"
                    )
            elif "b" in record:
                steps.append(record)
            elif "first" in record:
                requests.append(record)
            # Other records (a request's preemptions and resumptions) are request_timeline's.
    if header is None:
        raise ValueError(f"{path} has no corral step log header (kind {STEP_LOG_KIND!r})")
    return header, steps, requests


def request_timeline(path: str | Path, request_id: str) -> list[dict]:
    """One request's records in a step log, in time order: its own record (arrival, add, first
    token) by its arrival, its preemptions and resumptions by their times. A log written before
    request ids were logged gives only the preemptions and resumptions."""
    timeline = []
    with Path(path).open() as lines:
        for line in lines:
            if request_id not in line:
                continue
            record = json.loads(line)
            if request_id in (record.get("id"), record.get("preempt"), record.get("resume")):
                timeline.append(record)
    return sorted(timeline, key=lambda record: record.get("t", record.get("arrival", 0.0)))
