"""Router policies moved to corral/cluster/routing.py (shared with the real router); this module
re-exports them for code that still imports corral.sim.router."""

from __future__ import annotations

from corral.cluster.routing import (
    ROUTER_POLICIES,
    LeastKVLoad,
    LeastOutstanding,
    PowerOfTwoChoices,
    PrefixAware,
    ReplicaLoad,
    RoundRobin,
    RouterPolicy,
    RoutingRequest,
    make_router,
)

InstanceLoad = ReplicaLoad  # the former name

__all__ = [
    "ROUTER_POLICIES",
    "InstanceLoad",
    "LeastKVLoad",
    "LeastOutstanding",
    "PowerOfTwoChoices",
    "PrefixAware",
    "ReplicaLoad",
    "RoundRobin",
    "RouterPolicy",
    "RoutingRequest",
    "make_router",
]
