"""Forwarding a request to a replica, with failover.

Before the first response byte nothing has reached the client, so a failure there moves the
request to another replica (up to max_retries times): a connection refused or timed out (the
replica also leaves the rotation at once), a connection reset before the headers, a 503 (the
replica overloaded or shutting down). After the headers, a failure is reported, never hidden: a
stream gets a final error event in corral serve's shape (`data: {"error": {...}}`, then
`data: [DONE]`), exactly as corral serve ends a stream that fails; a body cut short becomes a
502. A stream is relayed event by event as the replica writes it (no buffering beyond the
event being received), so that an error event always starts on an event boundary.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Mapping

import httpx
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from corral.cluster.health import ReplicaSet
from corral.cluster.replicas import Replica
from corral.cluster.routing import RoutingRequest
from corral.serve.errors import APIError
from corral.serve.streaming import DONE, sse

logger = logging.getLogger(__name__)

# Not forwarded either way: hop-by-hop headers, and those the next hop sets itself.
# accept-encoding is dropped so that replicas answer uncompressed (streams are parsed into events).
_REQUEST_SKIP = frozenset(
    ("host", "content-length", "connection", "keep-alive", "transfer-encoding", "te", "upgrade",
     "trailer", "proxy-authorization", "proxy-connection", "accept-encoding")
)  # fmt: skip
_RESPONSE_SKIP = frozenset(
    ("content-length", "connection", "keep-alive", "transfer-encoding", "date", "server",
     "trailer", "upgrade")
)  # fmt: skip
# A replica's 503 codes that mean it is going away (rather than overloaded): out of the rotation.
_GONE_CODES = frozenset(("dead", "engine_dead", "shutting_down"))
_EVENT_END = b"\n\n"


def request_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The client's headers to send on (Authorization included)."""
    return {k: v for k, v in headers.items() if k.lower() not in _REQUEST_SKIP}


def response_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.lower() not in _RESPONSE_SKIP}


class Forwarder:
    """Sends requests to the replicas the ReplicaSet chooses; see the module docstring.

    retry_server_errors: move a request on any 5xx answer, not only a 503 (for requests the
    router consumes itself and that are safe to run twice, such as a disaggregated router's
    prefill leg). buffered: read every answer whole, streams included (the router reads it).
    """

    def __init__(
        self,
        replica_set: ReplicaSet,
        client: httpx.AsyncClient,
        *,
        max_retries: int,
        retry_server_errors: bool = False,
        buffered: bool = False,
    ) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.replica_set = replica_set
        self.client = client
        self.max_retries = max_retries
        self.retry_server_errors = retry_server_errors
        self.buffered = buffered
        self.metrics = replica_set.metrics

    async def forward(
        self,
        method: str,
        route: str,
        headers: Mapping[str, str],
        body: bytes | None = None,
        routing: RoutingRequest | None = None,
        *,
        first_choice: Replica | None = None,
    ) -> Response:
        """The replica's answer to the request (routing: chosen by the policy; None: by least
        outstanding requests; first_choice, when available: tried first), after up to
        max_retries moves; a 502/503 when none answered."""
        tried: set[int] = set()
        failed: tuple[Replica, str] | None = None
        refusal: Response | None = None  # the last 5xx moved from, passed on if nothing better
        error: APIError | None = None
        for attempt in range(self.max_retries + 1):
            replica_set = self.replica_set
            if attempt == 0 and first_choice is not None and first_choice.is_available:
                replica = first_choice
            elif routing is not None:
                replica = replica_set.select(routing, tried)
            else:
                replica = replica_set.pick_any(tried)
            if replica is None:
                break
            if failed is not None:
                self.metrics.count_retry(*failed)
            tried.add(replica.index)
            self.metrics.count_request(replica, route)
            replica.num_in_flight += 1
            request = self.client.build_request(
                method, replica.url + route, content=body, headers=dict(headers)
            )
            try:
                response = await self.client.send(request, stream=True)
            except httpx.TransportError as exc:
                replica.num_in_flight -= 1
                reason = _transport_reason(exc)
                message = f"replica {replica.url} failed before answering: {_describe(exc)}"
                if reason == "connect":
                    replica_set.eject(replica, message)
                self.metrics.count_failure(replica, reason)
                failed = (replica, reason)
                error = APIError(502, message, code="replica_unavailable")
                continue
            except BaseException:  # cancelled (the client left)
                replica.num_in_flight -= 1
                raise
            status = response.status_code
            if self._is_retried(status) and attempt < self.max_retries:
                try:
                    content = await response.aread()
                except httpx.HTTPError:
                    content = b""
                finally:
                    replica.num_in_flight -= 1
                    await response.aclose()
                code = _error_code(content)
                if status == 503 and code in _GONE_CODES:
                    replica_set.eject(replica, f"replica {replica.url} answered 503 ({code})")
                reason = "unavailable" if status == 503 else f"status_{status}"
                self.metrics.count_failure(replica, reason)
                failed = (replica, reason)
                refusal = Response(content, status, headers=response_headers(response))
                continue
            return await self._relay(replica, response)
        if refusal is not None:
            return refusal
        if error is not None:
            raise error
        self.metrics.no_replica.inc()
        raise APIError(
            503,
            f"no replica is available ({len(self.replica_set.replicas)} configured, none healthy)",
            code="no_replica_available",
        )

    def _is_retried(self, status: int) -> bool:
        return status == 503 or (self.retry_server_errors and status >= 500)

    async def _relay(self, replica: Replica, response: httpx.Response) -> Response:
        """The replica's response to the client; owns response and the in-flight count."""
        relay = _Relay(replica, response, self.metrics)
        is_stream = response.headers.get("content-type", "").startswith("text/event-stream")
        if is_stream and not self.buffered:
            return _RelayResponse(relay, response)
        try:
            content = await response.aread()
        except httpx.HTTPError as exc:
            self.metrics.count_failure(replica, "body_cut")
            raise APIError(
                502,
                f"replica {replica.url} failed while sending its answer (status "
                f"{response.status_code}): {_describe(exc)}; the request may have run there",
                code="replica_disconnected",
            ) from None
        finally:
            await relay.close()
        if response.status_code >= 500:
            self.metrics.count_failure(replica, f"status_{response.status_code}")
        answer = Response(content, response.status_code, headers=response_headers(response))
        answer.corral_replica = replica  # type: ignore[attr-defined]  # who answered
        return answer


class _Relay:
    """A replica's open response: its events, then (once) the cleanup."""

    def __init__(self, replica: Replica, response: httpx.Response, metrics) -> None:  # noqa: ANN001
        self.replica = replica
        self.response = response
        self.metrics = metrics
        self.is_closed = False

    async def events(self) -> AsyncIterator[bytes]:
        """Whole SSE events as they arrive; a stream that fails, or ends without [DONE], ends
        with an error event and [DONE]."""
        buffer = b""
        is_done = False
        try:
            async for chunk in self.response.aiter_raw():
                buffer += chunk
                end = buffer.rfind(_EVENT_END)
                if end >= 0:
                    events, buffer = buffer[: end + 2], buffer[end + 2 :]
                    is_done = events.endswith(DONE)
                    yield events
            if is_done and not buffer.strip():
                return
            problem = "closed the stream before its end"
        except httpx.HTTPError as exc:
            problem = f"broke the stream: {_describe(exc)}"
        message = f"replica {self.replica.url} {problem}; the response is incomplete"
        logger.warning(message)
        self.metrics.count_failure(self.replica, "stream_cut")
        yield sse(APIError(502, message, code="replica_disconnected").body())
        yield DONE

    async def close(self) -> None:
        if self.is_closed:
            return
        self.is_closed = True
        self.replica.num_in_flight -= 1
        with contextlib.suppress(Exception):
            await self.response.aclose()


class _RelayResponse(StreamingResponse):
    """A streaming response that closes the replica's stream however it ends (finished, client
    gone, cancelled), so the replica aborts the request when the client leaves."""

    def __init__(self, relay: _Relay, response: httpx.Response) -> None:
        super().__init__(
            relay.events(),
            status_code=response.status_code,
            headers=response_headers(response),
        )
        self.relay = relay

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.relay.close()


def _transport_reason(error: httpx.TransportError) -> str:
    if isinstance(error, httpx.ConnectError | httpx.ConnectTimeout):
        return "connect"
    return "disconnected"


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _error_code(content: bytes) -> str | None:
    try:
        return json.loads(content)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
