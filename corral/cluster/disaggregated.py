"""Disaggregated prefill/decode routing: each completion computes its prompt on a prefill
replica, then generates on a decode replica that fetches the prompt's KV from it.

The HTTP contract (vLLM's field name, kv_transfer_params; the engines' side is `corral serve
--kv-role prefill|decode`):

1. Prefill leg, to the replica the policy picks in the prefill pool: the client's JSON body with
   max_tokens 1 (and max_completion_tokens 1 when the client used that key), stream false, no
   stream_options or min_tokens, n 1, and kv_transfer_params {"do_remote_decode": true}. The
   answer is a completion plus a top-level kv_transfer_params: an object, or null when the
   replica kept no KV (e.g. a prompt shorter than one KV block). The client never sees it.
2. Decode leg, to the replica the policy picks in the decode pool: the client's body plus the
   prefill's kv_transfer_params (no key when it was null), relayed by proxy.Forwarder exactly as
   the plain router relays (streams event by event, failover before the first byte).

Failures: a prefill replica that fails before answering (connection error, 5xx) is replaced by
another, up to max_retries moves; when none answers, the decode replica gets the request without
kv_transfer_params and computes the prompt itself (correct, only slower). A prefill replica's
4xx is the client's answer as it is, and no decode leg runs. Requests the prefill leg cannot
serve go straight to a decode replica: a body that is not a JSON object (the replica answers the
400), several sequences (n or best_of above 1), several prompts in one completion. The router
owns kv_transfer_params: a client's own is dropped from what the replicas get.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
from starlette.responses import Response

from corral.cluster.proxy import Forwarder
from corral.cluster.replica_pool import ReplicaPool, build_pool
from corral.cluster.router_metrics import DisaggregationMetrics, RouterMetrics
from corral.cluster.routing import RoutingRequest
from corral.serve.errors import APIError

if TYPE_CHECKING:
    from corral.cluster.router_app import RouterConfig

logger = logging.getLogger(__name__)

KV_TRANSFER_PARAMS = "kv_transfer_params"
# Dropped from the prefill leg: it streams nothing and generates one token.
_PREFILL_DROPPED = ("stream_options", "min_tokens", KV_TRANSFER_PARAMS)


def skip_reason(payload: object) -> str | None:
    """Why a request goes straight to a decode replica, with no prefill leg (None: it gets
    one): unreadable_body, several_sequences, several_prompts."""
    if not isinstance(payload, dict):
        return "unreadable_body"
    for key in ("n", "best_of"):
        count = payload.get(key)
        if isinstance(count, bool) or count not in (None, 1):
            return "several_sequences"
    prompt = payload.get("prompt")
    if isinstance(prompt, list) and len(prompt) > 1 and not isinstance(prompt[0], int):
        return "several_prompts"
    return None


def prefill_body(payload: Mapping[str, Any]) -> bytes:
    """The prefill leg's body: the client's, computing the prompt and one token only, and
    asking the replica to keep the prompt's KV for a decode replica."""
    body = {key: value for key, value in payload.items() if key not in _PREFILL_DROPPED}
    body["max_tokens"] = 1
    if "max_completion_tokens" in body:
        body["max_completion_tokens"] = 1
    body["stream"] = False
    body["n"] = 1
    body[KV_TRANSFER_PARAMS] = {"do_remote_decode": True}
    return _encode(body)


def decode_body(
    payload: Mapping[str, Any], original: bytes, kv_transfer_params: dict[str, Any] | None
) -> bytes:
    """The decode leg's body: the client's plus the prefill's kv_transfer_params (a client's
    own dropped); the client's bytes unchanged when there is nothing to add or drop."""
    if kv_transfer_params is None and KV_TRANSFER_PARAMS not in payload:
        return original
    body = {key: value for key, value in payload.items() if key != KV_TRANSFER_PARAMS}
    if kv_transfer_params is not None:
        body[KV_TRANSFER_PARAMS] = kv_transfer_params
    return _encode(body)


def _encode(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class PrefillOutcome:
    """What a prefill leg gave: the KV to fetch, or why the decode replica computes the prompt
    itself, or the prefill replica's 4xx (the client's answer)."""

    kv_transfer_params: dict[str, Any] | None = None
    fallback_reason: str | None = None  # no_prefill_replica, prefill_failed, ...
    client_answer: Response | None = None


class DisaggregatedForwarder:
    """Runs each completion's prefill leg on the prefill pool, then its decode leg on the
    decode pool through the plain router's Forwarder; see the module docstring."""

    def __init__(
        self,
        prefill_pool: ReplicaPool,
        decode: Forwarder,
        client: httpx.AsyncClient,
        *,
        max_retries: int,
        metrics: DisaggregationMetrics,
    ) -> None:
        self.prefill_pool = prefill_pool
        # Prefill answers are read whole by the router and safe to compute twice: any 5xx moves
        # the request to another prefill replica.
        self.prefill = Forwarder(
            prefill_pool.replica_set,
            client,
            max_retries=max_retries,
            retry_server_errors=True,
            buffered=True,
        )
        self.decode = decode
        self.metrics = metrics

    async def forward(
        self,
        route: str,
        headers: Mapping[str, str],
        body: bytes,
        payload: object,
        routing: RoutingRequest,
    ) -> Response:
        """The client's answer to a POST of body (payload: body parsed, None when it is not
        JSON) to route: the decode replica's, after a prefill leg when the request allows one;
        the prefill replica's when it rejected the request (4xx)."""
        reason = skip_reason(payload)
        if reason is not None:
            self.metrics.skipped.labels(reason=reason).inc()
            if isinstance(payload, dict):
                body = decode_body(payload, body, None)
            return await self.decode.forward("POST", route, headers, body, routing)
        assert isinstance(payload, dict)
        outcome = await self.run_prefill(route, headers, payload, routing)
        if outcome.client_answer is not None:
            return outcome.client_answer
        if outcome.kv_transfer_params is not None:
            self.metrics.remote_prefills.inc()
        else:
            self.metrics.fallbacks.labels(reason=outcome.fallback_reason).inc()
        decode = decode_body(payload, body, outcome.kv_transfer_params)
        return await self.decode.forward("POST", route, headers, decode, routing)

    async def run_prefill(
        self,
        route: str,
        headers: Mapping[str, str],
        payload: Mapping[str, Any],
        routing: RoutingRequest,
    ) -> PrefillOutcome:
        """The prefill leg, with failover over the prefill pool."""
        if self.prefill_pool.replica_set.num_available == 0:
            logger.warning("no prefill replica available: the decode replica computes the prompt")
            return PrefillOutcome(fallback_reason="no_prefill_replica")
        start = time.perf_counter()
        try:
            answer = await self.prefill.forward(
                "POST", route, headers, prefill_body(payload), routing
            )
        except APIError as error:  # no prefill replica answered
            logger.warning("prefill leg failed (%s): the decode replica computes the prompt", error)
            return PrefillOutcome(fallback_reason="prefill_failed")
        status = answer.status_code
        if 400 <= status < 500:
            return PrefillOutcome(client_answer=answer)
        if not 200 <= status < 300:
            logger.warning(
                "prefill leg answered %d: the decode replica computes the prompt", status
            )
            return PrefillOutcome(fallback_reason="prefill_failed")
        self.metrics.prefill_latency.observe(time.perf_counter() - start)
        try:
            params = json.loads(answer.body).get(KV_TRANSFER_PARAMS)
        except (ValueError, AttributeError, RecursionError):
            logger.warning("prefill leg answered no JSON object: the decode replica computes it")
            return PrefillOutcome(fallback_reason="prefill_failed")
        if not isinstance(params, dict):  # null: the prefill replica kept no KV
            return PrefillOutcome(fallback_reason="no_kv_transfer_params")
        return PrefillOutcome(kv_transfer_params=params)


def build_disaggregation(
    config: RouterConfig,
    metrics: RouterMetrics,
    client: httpx.AsyncClient,
    decode: Forwarder,
    *,
    headers: dict[str, str],
) -> DisaggregatedForwarder:
    """The prefill pool over config.prefill_urls (its own policy instance, health and KV
    events) in front of decode, the decode pool's Forwarder."""
    prefill_pool = build_pool(
        config,
        config.prefill_urls,
        config.prefill_kv_events,
        metrics,
        client,
        headers=headers,
        pool="prefill",
    )
    return DisaggregatedForwarder(
        prefill_pool,
        decode,
        client,
        max_retries=config.max_retries,
        metrics=DisaggregationMetrics(metrics.registry),
    )
