"""What a simulation returns (SimResult), and the pieces the simulator shares with its callers:
the hook run on each request it makes, and what the router sees of a request."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from corral.cluster.routing import RoutingRequest
from corral.request import Request
from corral.sim.autoscale import AutoscaleResult
from corral.sim.config import ClusterSpec
from corral.sim.instance import SimInstance
from corral.workloads.metrics import RequestRecord
from corral.workloads.spec import RequestSpec


@dataclass(slots=True)
class SimResult:
    records: list[RequestRecord]
    instances: list[SimInstance]
    end_time_s: float  # when the last step ended
    wall_time_s: float
    num_events: int
    spec: ClusterSpec
    # request id -> the instances it ran on (prefill instance first when disaggregated)
    routes: dict[str, list[int]]
    # What the autoscaler did (None: not autoscaled). instances then lists every instance that
    # was started, in start order (InstanceReport.index is its slot).
    autoscale: AutoscaleResult | None = None
    # request id -> its grammar, for the requests that carried one (ClusterSpec.structured)
    grammars: dict[str, int] = field(default_factory=dict)


RequestHook = Callable[[Request, RequestSpec], None]


def routing_request(request: Request) -> RoutingRequest:
    """What the router sees of a request: its prompt and its block hashes' extra keys."""
    return RoutingRequest(request.prompt_token_ids, request.adapter_id, request.cache_salt)
