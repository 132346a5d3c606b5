"""Messages between corral's Ray ingress and its replicas (Ray actors, so pickled).

The ingress reads the client's HTTP request once, computes what the routing policy needs of it
(a RoutingRequest: the templated prompt's token ids, adapter, cache salt) and sends both to the
replica Ray's request router picks (corral.cluster.ray_routing). The replica runs the request
through its own corral FastAPI app and streams the answer back: first a ResponseStart, then the
body as bytes chunks, exactly as the app wrote them (server-sent events stay event by event).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from corral.cluster.routing import RoutingRequest

# The response header that names the replica which answered (a Ray replica id).
REPLICA_HEADER = "x-corral-replica"


@dataclass(frozen=True, slots=True)
class ForwardedRequest:
    """A client's HTTP request as the replica's app receives it."""

    method: str
    path: str
    query_string: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    client: tuple[str, int] | None = None
    routing: RoutingRequest = field(default_factory=lambda: RoutingRequest(()))


@dataclass(frozen=True, slots=True)
class ResponseStart:
    """The status and headers of a replica's answer; the body chunks follow."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
