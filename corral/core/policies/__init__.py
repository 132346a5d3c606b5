"""Scheduling policies, registered by name. Importing this package registers the built-in ones.

fcfs, priority, sjf, srpt, mlfq, fair (VTC) and edf; see docs/scheduling.md. A policy is chosen
by a spec string, "name" or "name:key=value,...", e.g. "sjf:max_wait_s=30".
"""

from corral.core.policies import edf, fair, fcfs, mlfq, priority, sjf, srpt  # noqa: F401
from corral.core.policies.base import SCHEDULING_POLICIES, SchedulingPolicy
from corral.core.policies.options import build_from_spec


def make_policy(spec: str) -> SchedulingPolicy:
    """Build the policy a spec names ("sjf" or "sjf:max_wait_s=30,aging_tokens_per_s=1").
    Raises ValueError for an unknown policy or option."""
    return build_from_spec(SCHEDULING_POLICIES, spec)


__all__ = ["SCHEDULING_POLICIES", "SchedulingPolicy", "make_policy"]
