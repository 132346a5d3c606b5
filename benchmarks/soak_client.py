"""Sends soak plans with bounded concurrency (aiohttp) and classifies each response.

A planned disconnect closes the TCP connection: after a delay (whatever the request is doing by
then: connecting, waiting for the response, or streaming), or after a number of SSE events. A
request that completed before its disconnect moment counts as a normal, checked response.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from benchmarks.soak_checks import check_response, fold_json, fold_stream
from benchmarks.soak_mix import Plan

OUTCOMES = (
    "ok",
    "aborted",
    "expected_4xx",
    "4xx",
    "5xx",
    "incomplete",
    "unexpected_200",
    "transport_error",
    "not_sent",
)


@dataclass(slots=True)
class Result:
    index: int
    outcome: str
    status: int | None = None
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    completion_tokens: int = 0
    cached_tokens: int = 0


def _status_result(plan: Plan, status: int, text: str) -> Result:
    detail = f"HTTP {status}: {text[:500]}"
    if status >= 500:
        return Result(plan.index, "5xx", status, [detail])
    if plan.expect_status == status:
        return Result(plan.index, "expected_4xx", status)
    return Result(plan.index, "4xx", status, [detail])


async def _exchange(session: aiohttp.ClientSession, base_url: str, plan: Plan) -> Result:
    async with session.post(base_url + plan.path, json=plan.body) as response:
        status = response.status
        if status != 200:
            return _status_result(plan, status, await response.text(errors="replace"))
        if plan.expect_status != 200:
            return Result(plan.index, "unexpected_200", status, [f"expected {plan.expect_status}"])
        if plan.stream:
            after_events = plan.disconnect.after_events if plan.disconnect else None
            lines: list[bytes] = []
            events = 0
            async for line in response.content:
                lines.append(line)
                if line.startswith(b"data: ") and line.strip() != b"data: [DONE]":
                    events += 1
                    if after_events is not None and events >= after_events:
                        response.close()
                        return Result(plan.index, "aborted", status)
            choices, usage, problems = fold_stream(plan, lines)
        else:
            try:
                body = json.loads(await response.read())
            except ValueError as error:
                return Result(plan.index, "incomplete", status, [f"undecodable body: {error}"])
            choices, usage, problems = fold_json(plan, body)
    problems += check_response(plan, choices, usage)
    result = Result(plan.index, "incomplete" if problems else "ok", status, problems)
    if usage:
        result.completion_tokens = usage.get("completion_tokens") or 0
        result.cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return result


async def send(
    session: aiohttp.ClientSession, base_url: str, plan: Plan, timeout_s: float
) -> Result:
    """One request, its planned disconnect, and its classified result."""
    start = time.monotonic()
    disconnect_s = plan.disconnect.after_s if plan.disconnect else None
    limit_s = timeout_s if disconnect_s is None else min(disconnect_s, timeout_s)
    try:
        result = await asyncio.wait_for(_exchange(session, base_url, plan), limit_s)
    except asyncio.TimeoutError:
        if disconnect_s is not None and disconnect_s <= timeout_s:
            result = Result(plan.index, "aborted")
        else:
            result = Result(plan.index, "transport_error", problems=[f"timeout ({timeout_s} s)"])
    except (aiohttp.ClientError, OSError) as error:
        result = Result(
            plan.index, "transport_error", problems=[f"{type(error).__name__}: {error}"]
        )
    result.seconds = time.monotonic() - start
    return result


async def run_plans(
    base_url: str,
    plans: list[Plan],
    *,
    concurrency: int,
    timeout_s: float,
    deadline: float,
    api_key: str | None = None,
    on_result: Callable[[Result], None] | None = None,
) -> list[Result]:
    """Send every plan, at most concurrency at once; plans not started by deadline (monotonic)
    are 'not_sent'. Results in plan order."""
    results: list[Result | None] = [None] * len(plans)
    pending = iter(range(len(plans)))
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(
        connector=connector,
        headers=headers,
        timeout=aiohttp.ClientTimeout(total=None),  # send() bounds every request itself
        trust_env=False,
    ) as session:

        async def worker() -> None:
            for position in pending:
                plan = plans[position]
                if time.monotonic() > deadline:
                    result = Result(plan.index, "not_sent", problems=["past --max-duration-s"])
                else:
                    result = await send(session, base_url, plan, timeout_s)
                results[position] = result
                if on_result is not None:
                    on_result(result)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return [result for result in results if result is not None]
