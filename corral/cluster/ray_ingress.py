"""CorralIngress: corral's router as the ingress of the Ray Serve application.

Ray Serve's HTTP proxy hands every HTTP request to this deployment, which reads it once, turns
it into what corral's routing policy reads (corral.cluster.router_prompts.PromptReader: the
templated prompt's token ids, for prefix-aware only) and calls the replicas through a deployment
handle; Ray's request router for the replicas is corral's (corral.cluster.ray_routing), so the
replica is chosen by the same policy as under `corral router` and in the simulator. The answer
streams back chunk by chunk as the replica's app writes it (no buffering).

Failover: a replica that dies before it answers costs nothing but a retry on another (up to
max_retries); one that dies mid-answer ends a stream with an error event in corral serve's shape
and [DONE], never a silent truncation. When the client leaves, the call is cancelled, and the
replica's app sees the disconnect and aborts the request in its engine.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Collection
from typing import Any

from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from corral.cluster.proxy import request_headers
from corral.cluster.ray_messages import ForwardedRequest, ResponseStart
from corral.cluster.router_prompts import PROMPT_POLICIES, PromptReader
from corral.cluster.routing import RoutingRequest
from corral.serve.errors import APIError
from corral.serve.streaming import DONE, sse

logger = logging.getLogger(__name__)

PROMPT_ROUTES = frozenset(("/v1/completions", "/v1/chat/completions"))
_METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]
# Ray's failures of a replica that mean "try another" when nothing was answered yet.
_REPLICA_GONE = (RayActorError, ActorUnavailableError)


@serve.ingress()
class CorralIngress:
    """A Ray Serve deployment class: CorralIngress.bind(replicas_handle, policy, model_dir,
    base_model_names, max_retries) (see corral.cluster.ray_serve.build_application)."""

    def __init__(
        self,
        replicas: Any,  # a DeploymentHandle of CorralReplica
        policy: str,
        model_dir: str | None,
        base_model_names: Collection[str],
        max_retries: int = 2,
    ) -> None:
        tokenizer = None
        if policy in PROMPT_POLICIES and model_dir is not None:
            from corral.engine.tokenizer import Tokenizer

            tokenizer = Tokenizer(model_dir)
        self.reader = PromptReader(tokenizer, base_model_names)
        self.replicas = replicas.options(stream=True)
        self.max_retries = max_retries
        self._app = Starlette(routes=[Route("/{path:path}", self.forward, methods=_METHODS)])

    def __serve_build_asgi_app__(self) -> Starlette:
        return self._app

    async def forward(self, request: Request) -> Response:
        """Send request to the replica corral's policy picks; relay its answer."""
        body = await request.body()
        path = request.url.path
        routing = RoutingRequest(())
        if request.method == "POST" and path in PROMPT_ROUTES and self.reader.tokenizer:
            try:
                payload = json.loads(body)
            except ValueError:  # the replica answers the 400
                payload = None
            routing = await self.reader.read(path, payload)
        client = (request.client.host, request.client.port) if request.client else None
        forwarded = ForwardedRequest(
            request.method,
            path,
            request.url.query.encode(),
            tuple(request_headers(request.headers).items()),
            body,
            client,
            routing,
        )
        for attempt in range(self.max_retries + 1):
            stream = self.replicas.handle_http.remote(forwarded)
            try:
                start = await stream.__anext__()
            except _REPLICA_GONE as error:
                logger.warning("a replica failed before answering (try %d): %s", attempt, error)
                continue
            assert isinstance(start, ResponseStart)
            return StreamingResponse(
                _relay(stream, start), status_code=start.status, headers=dict(start.headers)
            )
        message = f"no replica answered after {self.max_retries + 1} tries"
        return APIError(502, message, code="replica_unavailable").response()


async def _relay(stream: Any, start: ResponseStart) -> AsyncIterator[bytes]:
    """The replica's body chunks; a cut stream of events ends with an error event and [DONE]
    (a cut plain body just ends: its status is already sent)."""
    is_events = any(
        k.lower() == "content-type" and v.startswith("text/event-stream") for k, v in start.headers
    )
    is_finished = False
    try:
        async for chunk in stream:
            yield chunk
        is_finished = True
    except _REPLICA_GONE as error:
        problem = type(error).__name__
        message = f"the replica broke the stream: {problem}; the response is incomplete"
        logger.warning(message)
        if not is_events:
            raise
        yield sse(APIError(502, message, code="replica_disconnected").body())
        yield DONE
    finally:
        if not is_finished:  # the client left (or the stream broke): stop the replica's work
            stream.cancel()
