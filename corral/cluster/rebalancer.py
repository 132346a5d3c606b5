"""The router's Rebalancer: asks replicas to move requests out (live migration,
corral/cluster/migration.py): draining replicas, KV pressure, and operators' moves, each with
the pre-copy stage (blocks lent while the request runs, prefetched by its target) unless
MigrationConfig.precopy is off."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

import httpx
from fastapi import Request
from starlette.responses import Response

from corral.cluster.health import ReplicaSet
from corral.cluster.migration import MigrationConfig, MigrationMetrics
from corral.cluster.replicas import Replica
from corral.core.migration import pick_rebalance, rebalance_max_num_tokens
from corral.serve.errors import APIError
from corral.serve.migration import MAX_MIGRATE_OUT

logger = logging.getLogger(__name__)

DRAIN_POLL_S = 0.02


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
        # request id -> the replica that prefetched its KV, for the MigratingForwarder.
        self.planned: dict[str, Replica] = {}
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
        loads, waiting = [r.kv_load for r in serving], [r.num_waiting for r in serving]
        pair = pick_rebalance(loads, high, self.config.min_gap, waiting)
        if pair is None:
            return moved
        loaded, idle = serving[pair[0]], serving[pair[1]]
        recently = self._last_move.get(loaded.index, float("-inf"))
        if time.monotonic() - recently > 2 * self.scrape_interval_s:
            self._last_move[loaded.index] = time.monotonic()
            capacity = loaded.num_blocks * loaded.block_size
            limit = rebalance_max_num_tokens(loaded.kv_load, idle.kv_load, capacity)
            moved += await self.migrate_out(loaded, 1, "pressure", limit)
        return moved

    async def migrate_out(
        self,
        replica: Replica,
        max_num_requests: int,
        reason: str,
        max_num_tokens: int | None = None,
    ) -> int:
        """Ask replica to move requests out; the number it moved (0 when it failed). With
        pre-copy, first their blocks are lent while they run and prefetched by their targets,
        so that the final stop copies only what was filled since."""
        body: dict[str, Any] = {"max_num_requests": max_num_requests}
        if max_num_tokens is not None:
            body["max_num_tokens"] = max_num_tokens
        if self.config.precopy:
            prefetched = await self._precopy(replica, body)
            if prefetched:
                body = {"request_ids": prefetched}
        answer = await self._post(replica, "/corral/migrate_out", body)
        num_moved = len(answer.get("migrated", ())) if answer is not None else 0
        if num_moved:
            self.metrics.requested.labels(reason=reason).inc(num_moved)
            logger.info("replica %s moved %d request(s) out (%s)", replica.url, num_moved, reason)
        return num_moved

    async def _precopy(self, replica: Replica, body: dict[str, Any]) -> list[str]:
        """The pre-copy stage: the ids of the requests whose blocks their targets prefetched."""
        answer = await self._post(replica, "/corral/migrate_out", body | {"precopy": True})
        lent = answer.get("precopied", []) if answer is not None else []
        others = [r for r in self.replica_set.replicas if r.is_available and r is not replica]
        if not lent or not others:
            return []
        others.sort(key=lambda r: (r.kv_load, r.num_outstanding_requests))

        async def prefetch(index: int, item: dict[str, Any]) -> str | None:
            target = others[index % len(others)]
            fields = {key: item[key] for key in ("kv_transfer_params", "block_hashes")}
            done = await self._post(target, "/corral/prefetch", fields)
            request_id = str(item["request_id"])
            self.planned[request_id] = target  # even when it failed: it was chosen
            return request_id if done is not None else None

        ids = await asyncio.gather(*(prefetch(i, item) for i, item in enumerate(lent)))
        return [request_id for request_id in ids if request_id is not None]

    async def _post(self, replica: Replica, route: str, body: dict[str, Any]) -> Any:
        """POST to a replica: its JSON answer, None when it failed (logged)."""
        try:
            answer = await self.client.post(
                replica.url + route, json=body, headers=self.headers, timeout=30.0
            )
            if answer.status_code != 200:
                logger.warning("replica %s refused %s (%d): %s", replica.url, route,
                               answer.status_code, answer.text[:200])  # fmt: skip
                return None
            return answer.json()
        except (httpx.HTTPError, ValueError) as error:
            logger.warning("replica %s did not answer %s: %s", replica.url, route, error)
            return None


def install_admin_routes(app: Any, replica_set: ReplicaSet, rebalancer: Rebalancer) -> None:
    """POST /admin/drain {"url": replica URL, "drain": true|false}: take a replica out of the
    rotation and move its requests to the others (scale-down, a spot-instance notice), or bring
    it back; answers the replica's URL, whether it drains, and its requests still in flight.
    POST /admin/migrate: see migrate() below."""

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

    @app.post("/admin/migrate")
    async def migrate(request: Request) -> Response:
        """Move up to max_num_requests (default 1) of a replica's largest requests to the
        others now, as rebalancing would: {"url": replica URL, "max_num_requests": k}."""
        try:
            body = await request.json()
            url, count = body["url"], body.get("max_num_requests", 1)
        except (ValueError, KeyError, TypeError):
            raise APIError(400, 'the body must be {"url": replica URL}') from None
        replica = next((r for r in replica_set.replicas if r.url == str(url).rstrip("/")), None)
        if replica is None:
            raise APIError(404, f"no replica {url!r}", param="url")
        if not isinstance(count, int) or isinstance(count, bool) or not 0 < count <= 1000:
            raise APIError(400, f"max_num_requests must be 1..1000, got {count!r}")
        moved = await rebalancer.migrate_out(replica, count, "admin")
        return Response(json.dumps({"url": replica.url, "migrated": moved}),
                        media_type="application/json")  # fmt: skip
