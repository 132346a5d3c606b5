"""Live migration in the router (Llumnix): continue migrated requests elsewhere, and decide
when requests move (docs/disaggregation.md#live-migration).

With `--migration` the router marks each single-sequence completion it forwards as movable
(header x-corral-migratable, corral/serve/migration.py). When a replica moves such a request
out (POST /corral/migrate_out), its answer ends in a migration event (streams) or finish reason
"migrated" (whole answers) carrying a Resume; the router sends the client's body again with
that Resume as kv_transfer_params to another replica (the least KV-loaded one), which fetches
the lent KV and goes on. The client sees one answer: the stream continues where it stopped,
a whole answer is the continuing replica's, which counts the whole output.

The Rebalancer asks replicas to move requests out: a draining replica (POST /admin/drain, for
scale-down or a spot-instance notice) moves out everything it can, again every DRAIN_POLL_S
while the router has requests there; and, with kv_usage_high set, every interval_s, the most
KV-loaded replica moves out its largest request when it is above kv_usage_high and the least
loaded one is at least min_gap below it (once per two scrapes of its load, so that a move is
seen before the next).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import Request
from prometheus_client import CollectorRegistry, Counter
from starlette.responses import Response, StreamingResponse

from corral.cluster.health import ReplicaSet
from corral.cluster.proxy import Forwarder
from corral.cluster.replicas import Replica
from corral.cluster.routing import RoutingRequest
from corral.core.migration import pick_rebalance
from corral.serve.errors import APIError
from corral.serve.migration import MAX_MIGRATE_OUT, MIGRATABLE_HEADER, MIGRATION_EVENT_KEY
from corral.serve.streaming import DONE, sse

logger = logging.getLogger(__name__)

KV_TRANSFER_PARAMS = "kv_transfer_params"
_EVENT_MARK = f'"{MIGRATION_EVENT_KEY}"'.encode()
_MAX_MOVES = 8  # one request continued at most this many times
DRAIN_POLL_S = 0.02


@dataclass(frozen=True, slots=True)
class MigrationConfig:
    """`--migration` and the rebalancing flags (kv_usage_high None: no pressure moves)."""

    enabled: bool = False
    kv_usage_high: float | None = None
    min_gap: float = 0.2
    interval_s: float = 0.5

    def __post_init__(self) -> None:
        if self.kv_usage_high is not None and not 0 < self.kv_usage_high <= 1:
            raise ValueError(f"--rebalance-kv-usage must be in (0, 1], got {self.kv_usage_high}")
        if self.interval_s <= 0:
            raise ValueError(f"--rebalance-interval-s must be > 0, got {self.interval_s}")


class MigrationMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requested = Counter(
            "corral:router_migrations_requested",
            "Requests replicas moved out when the router asked (reason: pressure, drain).",
            ["reason"],
            registry=registry,
        )
        self.continued = Counter(
            "corral:router_migrations_continued",
            "Migrated requests the router sent on to another replica (outcome: ok, failed).",
            ["outcome"],
            registry=registry,
        )


def is_movable(payload: object) -> bool:
    """A single-sequence JSON request (the ones a replica can continue elsewhere)."""
    if not isinstance(payload, dict):
        return False
    for key in ("n", "best_of"):
        count = payload.get(key)
        if isinstance(count, bool) or count not in (None, 1):
            return False
    prompt = payload.get("prompt")
    return not (isinstance(prompt, list) and len(prompt) > 1 and not isinstance(prompt[0], int))


class MigratingForwarder:
    """Forwards movable requests marked as such and continues those that move; see the
    module docstring."""

    def __init__(self, forwarder: Forwarder, metrics: MigrationMetrics) -> None:
        self.forwarder = forwarder
        self.replica_set: ReplicaSet = forwarder.replica_set
        self.metrics = metrics

    async def forward(
        self,
        route: str,
        headers: Mapping[str, str],
        body: bytes,
        payload: object,
        routing: RoutingRequest | None,
    ) -> Response:
        """The client's answer to a POST of body to route (payload: the body parsed)."""
        if not is_movable(payload):
            return await self.forwarder.forward("POST", route, headers, body, routing)
        assert isinstance(payload, dict)
        marked = {**headers, MIGRATABLE_HEADER: "1"}
        response = await self.forwarder.forward("POST", route, marked, body, routing)
        return await self._follow(response, route, marked, payload, 0)

    async def _follow(
        self,
        response: Response,
        route: str,
        headers: dict[str, str],
        payload: dict[str, Any],
        num_moves: int,
    ) -> Response:
        """response, or the continuation of the request when it moved."""
        if isinstance(response, StreamingResponse):
            source = response.body_iterator
            response.body_iterator = self._stream(
                response, source, route, headers, payload, num_moves
            )
            return response
        if response.status_code != 200 or b'"migrated"' not in response.body:
            return response
        try:
            answer = json.loads(response.body)
            moved = answer["choices"][0]["finish_reason"] == "migrated"
            params = answer.get(KV_TRANSFER_PARAMS)
        except (ValueError, KeyError, IndexError, TypeError):
            return response
        if not moved or not isinstance(params, dict):
            return response
        source = getattr(response, "corral_replica", None)
        return await self._continue(route, headers, payload, params, source, num_moves)

    async def _stream(
        self,
        response: StreamingResponse,
        source: AsyncIterator[Any],
        route: str,
        headers: dict[str, str],
        payload: dict[str, Any],
        num_moves: int,
    ) -> AsyncIterator[bytes]:
        async for chunk in source:
            mark = chunk.find(_EVENT_MARK)
            if mark < 0:
                yield chunk
                continue
            start = chunk.rfind(b"data: ", 0, mark)
            end = chunk.find(b"\n\n", mark)
            if start > 0:
                yield chunk[:start]  # the events before the migration event
            try:
                params = json.loads(chunk[start + 6 : end])[MIGRATION_EVENT_KEY]
            except (ValueError, KeyError):
                params = None
            relay = getattr(response, "relay", None)
            replica = relay.replica if relay is not None else None
            if relay is not None:
                await relay.close()  # the source has finished this request
            if not isinstance(params, dict):
                event = chunk[start:end][:300].decode(errors="replace")
                message = f"unreadable migration event from the replica: {event!r}"
                yield sse(APIError(502, message, code="bad_gateway").body())
                yield DONE
                return
            try:
                moved = await self._continue(route, headers, payload, params, replica, num_moves)
            except APIError as error:
                yield sse(error.body())
                yield DONE
                return
            if not isinstance(moved, StreamingResponse):
                yield sse(APIError(502, _failed(moved), code="migration_failed").body())
                yield DONE
                return
            try:
                async for continued in moved.body_iterator:
                    yield continued
            finally:
                target_relay = getattr(moved, "relay", None)
                if target_relay is not None:
                    await target_relay.close()
            return

    async def _continue(
        self,
        route: str,
        headers: dict[str, str],
        payload: dict[str, Any],
        params: dict[str, Any],
        source: Replica | None,
        num_moves: int,
    ) -> Response:
        """Send the request on, with its Resume, to the least KV-loaded other replica (the
        source itself when no other is available)."""
        if num_moves >= _MAX_MOVES:
            self.metrics.continued.labels(outcome="failed").inc()
            raise APIError(502, f"request moved {num_moves} times", code="migration_failed")
        body = json.dumps({**payload, KV_TRANSFER_PARAMS: params}, ensure_ascii=False).encode()
        target = least_kv_loaded(self.replica_set, exclude=source)
        try:
            response = await self.forwarder.forward(
                "POST", route, headers, body, None, first_choice=target
            )
        except APIError:
            self.metrics.continued.labels(outcome="failed").inc()
            raise
        outcome = "ok" if response.status_code == 200 else "failed"
        self.metrics.continued.labels(outcome=outcome).inc()
        if outcome == "failed":
            return response
        return await self._follow(response, route, headers, payload, num_moves + 1)


def least_kv_loaded(replica_set: ReplicaSet, exclude: Replica | None) -> Replica | None:
    candidates = [r for r in replica_set.replicas if r.is_available and r is not exclude]
    return min(candidates, key=lambda r: (r.kv_load, r.num_outstanding_requests), default=exclude)


def _failed(response: Response) -> str:
    body = getattr(response, "body", b"")
    return f"the replica continuing a migrated request answered {response.status_code}: " + (
        body.decode(errors="replace")[:200] if isinstance(body, bytes) else ""
    )


class Rebalancer:
    """Asks replicas to move requests out (drain, memory pressure); see the module docstring."""

    def __init__(
        self,
        replica_set: ReplicaSet,
        client: httpx.AsyncClient,
        config: MigrationConfig,
        metrics: MigrationMetrics,
        *,
        headers: dict[str, str],
        scrape_interval_s: float,
    ) -> None:
        self.replica_set = replica_set
        self.client = client
        self.config = config
        self.metrics = metrics
        self.headers = headers
        self.scrape_interval_s = scrape_interval_s
        self._last_move: dict[int, float] = {}
        self._task: asyncio.Task | None = None
        self._draining: dict[int, asyncio.Task] = {}

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="corral-rebalancer")

    async def stop(self) -> None:
        for task in list(self._draining.values()):
            task.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.config.interval_s)
            try:
                await self.rebalance_once()
            except Exception:  # keep rebalancing; a replica may be restarting
                logger.exception("rebalancing failed")

    def drain_soon(self, replica: Replica) -> None:
        """Move a draining replica's requests out now and keep at it, every DRAIN_POLL_S, while
        the router has requests there (one in its prefill moves once it decodes)."""
        if replica.index not in self._draining:
            task = asyncio.create_task(self._drain(replica), name=f"corral-drain-{replica.index}")
            self._draining[replica.index] = task
            task.add_done_callback(lambda _: self._draining.pop(replica.index, None))

    async def _drain(self, replica: Replica) -> None:
        while replica.is_draining and replica.health.is_available and replica.num_in_flight:
            await self.migrate_out(replica, MAX_MIGRATE_OUT, "drain")
            await asyncio.sleep(DRAIN_POLL_S)

    async def rebalance_once(self) -> int:
        """One round of relieving KV pressure. Returns the requests moved."""
        moved = 0
        high = self.config.kv_usage_high
        if high is None:
            return moved
        serving = [r for r in self.replica_set.replicas if r.is_available]
        pair = pick_rebalance([r.kv_load for r in serving], high, self.config.min_gap)
        if pair is None:
            return moved
        loaded = serving[pair[0]]
        recently = self._last_move.get(loaded.index, float("-inf"))
        if time.monotonic() - recently > 2 * self.scrape_interval_s:
            self._last_move[loaded.index] = time.monotonic()
            moved += await self.migrate_out(loaded, 1, "pressure")
        return moved

    async def migrate_out(self, replica: Replica, max_num_requests: int, reason: str) -> int:
        """Ask replica to move requests out; the number it moved (0 when it failed)."""
        try:
            answer = await self.client.post(
                replica.url + "/corral/migrate_out",
                json={"max_num_requests": max_num_requests},
                headers=self.headers,
                timeout=10.0,
            )
            if answer.status_code != 200:
                logger.warning("replica %s refused to move requests out (%d): %s",
                               replica.url, answer.status_code, answer.text[:200])  # fmt: skip
                return 0
            num_moved = len(answer.json()["migrated"])
        except (httpx.HTTPError, ValueError, KeyError) as error:
            logger.warning("replica %s did not move requests out: %s", replica.url, error)
            return 0
        if num_moved:
            self.metrics.requested.labels(reason=reason).inc(num_moved)
            logger.info("replica %s moved %d request(s) out (%s)", replica.url, num_moved, reason)
        return num_moved


def install_drain_route(app: Any, replica_set: ReplicaSet, rebalancer: Rebalancer) -> None:
    """POST /admin/drain {"url": replica URL, "drain": true|false}: take a replica out of the
    rotation and move its requests to the others (scale-down, a spot-instance notice), or bring
    it back. Answers the replica's URL, whether it drains, and its requests still in flight."""

    @app.post("/admin/drain")
    async def drain(request: Request) -> Response:
        try:
            body = await request.json()
            url, draining = body["url"], body.get("drain", True)
        except (ValueError, KeyError, TypeError):
            raise APIError(400, 'the body must be {"url": replica URL, "drain": bool}') from None
        replica = next((r for r in replica_set.replicas if r.url == str(url).rstrip("/")), None)
        if replica is None:
            known = [r.url for r in replica_set.replicas]
            raise APIError(404, f"no replica {url!r}; the replicas are {known}", param="url")
        if not isinstance(draining, bool):
            raise APIError(400, f"drain must be true or false, got {draining!r}", param="drain")
        replica_set.set_draining(replica, draining)
        if draining:
            rebalancer.drain_soon(replica)
        answer = {"url": replica.url, "draining": draining, "num_in_flight": replica.num_in_flight}
        return Response(json.dumps(answer), media_type="application/json")
