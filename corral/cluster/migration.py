"""Live migration in the router (Llumnix): continue migrated requests elsewhere, and decide
when requests move (docs/disaggregation.md#live-migration).

With `--migration` the router marks each single-sequence completion it forwards as movable
(header x-corral-migratable, corral/serve/migration.py). When a replica moves such a request
out (POST /corral/migrate_out), its answer ends in a migration event (streams) or finish reason
"migrated" (whole answers) carrying a Resume; the router sends the client's body again with
that Resume as kv_transfer_params to another replica (the least KV-loaded one), which fetches
the lent KV and goes on. The client sees one answer: the stream continues where it stopped,
a whole answer is the continuing replica's, which counts the whole output.

The Rebalancer (corral/cluster/rebalancer.py) asks replicas to move requests out: a draining
replica (POST /admin/drain, for scale-down or a spot-instance notice) moves out everything it
can, again every DRAIN_POLL_S while the router has requests there; with kv_usage_high set,
every interval_s, the most KV-loaded replica moves out its largest request of at most half the
load gap when it is above kv_usage_high and the least loaded one is at least min_gap below it
(once per two scrapes of its load, so that a move is seen before the next); POST
/admin/migrate moves requests on an operator's word. Each move first lends the request's
blocks while it runs and has its target prefetch them (pre-copy), then stops it and copies
only the blocks filled since.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from starlette.responses import Response, StreamingResponse

from corral.cluster.disaggregated import skip_reason
from corral.cluster.health import ReplicaSet
from corral.cluster.proxy import Forwarder
from corral.cluster.replicas import Replica
from corral.cluster.routing import RoutingRequest
from corral.serve.errors import APIError
from corral.serve.migration import MIGRATABLE_HEADER, MIGRATED, MIGRATION_EVENT_KEY
from corral.serve.streaming import DONE, sse

logger = logging.getLogger(__name__)

KV_TRANSFER_PARAMS = "kv_transfer_params"
_EVENT_MARK = f'"{MIGRATION_EVENT_KEY}"'.encode()
# A request continued this many times is sent on unmarked: it stays where it lands (no ping-pong).
MAX_MOVES = 8


@dataclass(frozen=True, slots=True)
class MigrationConfig:
    """`--migration` and the rebalancing flags (kv_usage_high None: no pressure moves)."""

    enabled: bool = False
    kv_usage_high: float | None = None
    min_gap: float = 0.2
    interval_s: float = 0.5
    # Lend and prefetch a request's blocks while it runs, then stop it for the rest only.
    precopy: bool = True

    def __post_init__(self) -> None:
        if self.kv_usage_high is not None and not 0 < self.kv_usage_high <= 1:
            raise ValueError(f"--rebalance-kv-usage must be in (0, 1], got {self.kv_usage_high}")
        if self.interval_s <= 0:
            raise ValueError(f"--rebalance-interval-s must be > 0, got {self.interval_s}")


class MigrationMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requested = Counter(
            "corral:router_migrations_requested",
            "Requests replicas moved out when the router asked (reason: pressure, drain, admin).",
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
    """A single-sequence JSON request (the ones a replica can continue elsewhere): those a
    disaggregated router runs in two legs, for the same reasons."""
    return skip_reason(payload) is None


class MigratingForwarder:
    """Forwards movable requests marked as such and continues those that move; see the
    module docstring."""

    def __init__(
        self,
        forwarder: Forwarder,
        metrics: MigrationMetrics,
        planned: dict[str, Replica] | None = None,
    ) -> None:
        self.forwarder = forwarder
        self.replica_set: ReplicaSet = forwarder.replica_set
        self.metrics = metrics
        # request id -> the replica that prefetched its KV (the Rebalancer's pre-copy)
        self.planned: dict[str, Replica] = planned if planned is not None else {}

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
            moved = answer["choices"][0]["finish_reason"] == MIGRATED
            params = answer.get(KV_TRANSFER_PARAMS)
        except (ValueError, KeyError, IndexError, TypeError):
            return response
        if not moved or not isinstance(params, dict):
            return response
        source = getattr(response, "corral_replica", None)
        target = self.planned.pop(str(answer.get("id")), None)
        return await self._continue(route, headers, payload, params, source, num_moves, target)

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
                event = json.loads(chunk[start + 6 : end])
                params, request_id = event[MIGRATION_EVENT_KEY], str(event.get("request_id"))
            except (ValueError, KeyError, TypeError):
                params, request_id = None, ""
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
                target = self.planned.pop(request_id, None)
                moved = await self._continue(
                    route, headers, payload, params, replica, num_moves, target
                )
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
        target: Replica | None = None,
    ) -> Response:
        """Send the request on, with its Resume, to target (the replica that prefetched its
        KV), else the least KV-loaded other replica (the source itself when no other is
        available)."""
        if num_moves + 1 >= MAX_MOVES:
            headers = {k: v for k, v in headers.items() if k != MIGRATABLE_HEADER}
        body = json.dumps({**payload, KV_TRANSFER_PARAMS: params}, ensure_ascii=False).encode()
        if target is None or not target.is_available:
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
