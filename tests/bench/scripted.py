"""Test doubles for the bench client: virtual time and a transport that replays scripted SSE
bodies on it, so latencies come out exactly as scripted."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

# asyncio.sleep(0) rounds given to the tasks before virtual time jumps to the next timer. With
# no real I/O, every wake-up chain (timer -> task -> semaphore -> task) settles in a few rounds.
_SETTLE_ROUNDS = 50


class VirtualClock:
    """Clock for asyncio code: sleep() parks on a timer; run() jumps to the next timer once
    every task has settled, so time only moves when nothing else can."""

    def __init__(self) -> None:
        self._now = 0.0
        self._timers: list[tuple[float, int, asyncio.Future]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    async def sleep(self, delay_s: float) -> None:
        if delay_s <= 0:
            await asyncio.sleep(0)
            return
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (self._now + delay_s, next(self._seq), future))
        await future

    async def run(self, coroutine: Any) -> Any:
        task = asyncio.ensure_future(coroutine)
        while True:
            for _ in range(_SETTLE_ROUNDS):
                await asyncio.sleep(0)
            if task.done():
                return task.result()
            if not self._timers:
                task.cancel()
                raise RuntimeError("deadlock: the task waits, but no timer is pending")
            when, _, future = heapq.heappop(self._timers)
            self._now = max(self._now, when)
            if not future.cancelled():
                future.set_result(None)


def completion_chunk(text: str, finish_reason: str | None = None) -> bytes:
    body = {"choices": [{"index": 0, "text": text, "finish_reason": finish_reason}]}
    return b"data: " + json.dumps(body).encode() + b"\n"


def chat_chunk(content: str | None, role: str | None = None, finish: str | None = None) -> bytes:
    delta: dict[str, Any] = {}
    if role is not None:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    body = {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(body).encode() + b"\n"


def usage_chunk(num_prompt: int, num_output: int) -> bytes:
    usage = {"prompt_tokens": num_prompt, "completion_tokens": num_output}
    return b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n"


DONE_LINE = b"data: [DONE]\n"


@dataclass
class Script:
    """A scripted response: (seconds after the request arrived, raw line) pairs; or a status
    other than 200 with a body; or an exception raised at connect time or after the lines."""

    lines: list[tuple[float, bytes]] = field(default_factory=list)
    status: int = 200
    body: str = ""
    connect_error: Exception | None = None
    error_after_lines: Exception | None = None


def token_script(
    ttft_s: float,
    gap_s: float,
    num_tokens: int,
    *,
    num_prompt: int = 10,
    with_usage: bool = True,
    tokens_per_chunk: int = 1,
) -> Script:
    """A completion stream: the first chunk at ttft_s, one chunk every gap_s after it; each
    chunk carries tokens_per_chunk tokens ('t' each), usage and [DONE] with the last one."""
    num_chunks = -(-num_tokens // tokens_per_chunk)
    lines = []
    for index in range(num_chunks):
        last = index == num_chunks - 1
        text = "t" * min(tokens_per_chunk, num_tokens - index * tokens_per_chunk)
        lines.append((ttft_s + index * gap_s, completion_chunk(text, "length" if last else None)))
    end = lines[-1][0]
    if with_usage:
        lines.append((end, usage_chunk(num_prompt, num_tokens)))
    lines.append((end, DONE_LINE))
    return Script(lines)


class _Response:
    def __init__(self, script: Script, clock: VirtualClock, start_s: float) -> None:
        self.status = script.status
        self._script = script
        self._clock = clock
        self._start_s = start_s

    async def read_text(self) -> str:
        return self._script.body

    async def lines(self) -> AsyncIterator[bytes]:
        for offset_s, line in self._script.lines:
            await self._clock.sleep(self._start_s + offset_s - self._clock.now())
            yield line
        if self._script.error_after_lines is not None:
            raise self._script.error_after_lines


class ScriptedTransport:
    """Answers each POST with script_for(path, payload); keeps (time, path, payload) of each."""

    def __init__(self, clock: VirtualClock, script_for: Callable[[str, dict], Script]) -> None:
        self.clock = clock
        self.script_for = script_for
        self.requests: list[tuple[float, str, dict[str, Any]]] = []

    @contextlib.asynccontextmanager
    async def post(self, path: str, payload: dict[str, Any]) -> AsyncIterator[_Response]:
        self.requests.append((self.clock.now(), path, payload))
        script = self.script_for(path, payload)
        if script.connect_error is not None:
            raise script.connect_error
        yield _Response(script, self.clock, self.clock.now())

    async def get_json(self, path: str) -> Any:
        return {"data": [{"id": "scripted"}]}


def run_scripted(
    workload: Any,
    script_for: Callable[[str, dict], Script],
    *,
    max_concurrency: int | None = None,
    **request_options: Any,
) -> tuple[Any, ScriptedTransport]:
    """Run a ServeClient over a ScriptedTransport on virtual time; (ServeRun, transport)."""
    from corral.bench.client import ServeClient
    from corral.bench.payload import RequestOptions

    clock = VirtualClock()
    transport = ScriptedTransport(clock, script_for)
    options = RequestOptions(model="scripted", **request_options)
    client = ServeClient(workload, options, transport, max_concurrency=max_concurrency, clock=clock)
    return asyncio.run(clock.run(client.run())), transport


def text_specs(arrivals_s: list[float], num_output: int = 4, **fields: Any) -> Any:
    """A Workload of text requests 'r0', 'r1', ... arriving at arrivals_s."""
    from corral.workloads import RequestSpec, Workload

    specs = [
        RequestSpec(f"r{i}", t, 10, num_output, prompt=f"r{i}", **fields)
        for i, t in enumerate(arrivals_s)
    ]
    return Workload("scripted", specs)
