"""ServeClient: sends a workload to an OpenAI-compatible server on one event loop.

Root requests go out at their planned arrival times; a later turn of a conversation goes out
think_time_s after its parent's last token, with the parent's prompt and reply as context.
--max-concurrency bounds the requests in flight: a request that finds no free slot waits, and
its record's send time is when it actually went out (the wait shows as send delay). While a
response streams, the client only timestamps raw lines; everything else happens after.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from corral.bench.clock import Clock, MonotonicClock
from corral.bench.payload import RequestOptions, TurnContext, build_payload, check_workload
from corral.bench.record import ServeRecord, failed_record, stream_record
from corral.bench.stream import http_error_message, parse_stream
from corral.bench.transport import Transport
from corral.workloads import RequestSpec, Workload

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ServeRun:
    records: list[ServeRecord]  # in workload order
    duration_s: float  # from the start to the end of the last request
    max_in_flight: int


def describe_error(error: BaseException) -> str:
    if isinstance(error, asyncio.TimeoutError):
        return "timeout (--request-timeout-s)"
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class ServeClient:
    """Drive transport with workload; `await client.run()` returns every request's record."""

    def __init__(
        self,
        workload: Workload,
        options: RequestOptions,
        transport: Transport,
        *,
        max_concurrency: int | None = None,
        clock: Clock | None = None,
        on_record: Callable[[ServeRecord], None] | None = None,
    ) -> None:
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError(f"max concurrency must be >= 1, got {max_concurrency}")
        check_workload(workload, options)
        self.workload = workload
        self.options = options
        self.transport = transport
        self.max_concurrency = max_concurrency
        self.clock = clock or MonotonicClock()
        self.on_record = on_record
        ids = {spec.request_id for spec in workload}
        self._children: dict[str, list[RequestSpec]] = {}
        self._roots: list[RequestSpec] = []
        for spec in workload:
            parent = spec.parent_request_id
            if parent is not None and parent in ids:
                self._children.setdefault(parent, []).append(spec)
            else:
                self._roots.append(spec)
        self._records: dict[str, ServeRecord] = {}
        self._tasks: set[asyncio.Future] = set()
        self._in_flight = self._max_in_flight = 0
        self._start = 0.0

    def _elapsed(self) -> float:
        return self.clock.now() - self._start

    def _next_pause_s(self, spec: RequestSpec) -> float | None:
        """The pause before the spec's conversation's next turn (None: it has no next turn)."""
        children = self._children.get(spec.request_id)
        return children[0].think_time_s if children else None

    async def run(self) -> ServeRun:
        """Send every request of the workload and wait for all of them."""
        slots = asyncio.Semaphore(self.max_concurrency) if self.max_concurrency else None
        self._start = self.clock.now()
        for spec in self._roots:
            # A first turn's body does not depend on any reply: build it while waiting.
            body = build_payload(spec, self.workload, self.options, None, self._next_pause_s(spec))
            await self.clock.sleep(spec.arrival_time_s - self._elapsed())
            self._spawn(self._send(spec, spec.arrival_time_s, None, slots, body))
        while self._tasks:
            await asyncio.gather(*list(self._tasks))
        duration_s = self._elapsed()
        records = [self._records[spec.request_id] for spec in self.workload]
        return ServeRun(records, duration_s, self._max_in_flight)

    async def warmup(self, num_requests: int) -> list[str]:
        """Send the first num_requests root specs one at a time (not recorded); their errors."""
        self._start = self.clock.now()
        errors = []
        for spec in self._roots[:num_requests]:
            record, _ = await self._exchange(spec, 0.0, None)
            if record.record.error:
                errors.append(record.record.error)
        return errors

    def _spawn(self, coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _finish(self, record: ServeRecord) -> None:
        self._records[record.record.request_id] = record
        if self.on_record is not None:
            self.on_record(record)

    async def _send(
        self,
        spec: RequestSpec,
        scheduled_s: float,
        parent: TurnContext | None,
        slots: asyncio.Semaphore | None,
        body: tuple[dict[str, Any], TurnContext] | None = None,
    ) -> None:
        async with slots if slots is not None else contextlib.nullcontext():
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            try:
                record, context = await self._exchange(spec, scheduled_s, parent, body)
            finally:
                self._in_flight -= 1
        self._finish(record)
        for child in self._children.get(spec.request_id, []):
            if record.record.is_ok and context is not None:
                due_s = record.record.token_times_s[-1] + child.think_time_s
                self._spawn(self._send_later(child, due_s, context, slots))
            else:
                self._skip(child, record.end_time_s)

    async def _send_later(
        self,
        spec: RequestSpec,
        due_s: float,
        parent: TurnContext,
        slots: asyncio.Semaphore | None,
    ) -> None:
        await self.clock.sleep(due_s - self._elapsed())
        await self._send(spec, due_s, parent, slots)

    def _skip(self, spec: RequestSpec, at_s: float) -> None:
        """A turn whose parent failed is not sent; it and its own later turns count as failed."""
        error = "not sent: an earlier turn of its conversation failed"
        self._finish(failed_record(spec, at_s, at_s, at_s, error, is_sent=False))
        for child in self._children.get(spec.request_id, []):
            self._skip(child, at_s)

    async def _exchange(
        self,
        spec: RequestSpec,
        scheduled_s: float,
        parent: TurnContext | None,
        body: tuple[dict[str, Any], TurnContext] | None = None,
    ) -> tuple[ServeRecord, TurnContext | None]:
        payload, sent = body or build_payload(
            spec, self.workload, self.options, parent, self._next_pause_s(spec)
        )
        keep_text = spec.request_id in self._children
        lines: list[tuple[float, bytes]] = []
        status: int | None = None
        send_s = self._elapsed()
        try:
            async with self.transport.post(self.options.path, payload) as response:
                status = response.status
                if status != 200:
                    message = http_error_message(status, await response.read_text())
                    record = failed_record(spec, scheduled_s, send_s, self._elapsed(), message)
                    record.http_status = status
                    return record, None
                async for line in response.lines():
                    lines.append((self._elapsed(), line))
            transport_error = None
        except asyncio.CancelledError:
            raise
        except Exception as error:  # every transport failure is a counted, named error
            transport_error = describe_error(error)
            if status is None:
                return failed_record(
                    spec, scheduled_s, send_s, self._elapsed(), transport_error
                ), None
        end_s = self._elapsed()
        parsed = parse_stream(lines, is_chat=self.options.is_chat, keep_text=keep_text)
        record = stream_record(spec, scheduled_s, send_s, end_s, status, parsed, transport_error)
        return record, (sent.with_reply(parsed.text) if record.record.is_ok else None)
