"""Scheduling policies, registered by name. Importing this package registers the built-in ones."""

from corral.core.policies import fcfs  # noqa: F401
from corral.core.policies.base import SCHEDULING_POLICIES, SchedulingPolicy


def make_policy(name: str) -> SchedulingPolicy:
    return SCHEDULING_POLICIES.get(name)()


__all__ = ["SCHEDULING_POLICIES", "SchedulingPolicy", "make_policy"]
