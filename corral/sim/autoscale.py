"""SimAutoscaler: the shared autoscaling policy (corral/cluster/autoscaling.py) driving the
cluster simulator's instances on the virtual clock.

The cluster has one slot per max_replicas (ClusterSpec.instances); a slot is free, starting,
serving or draining, and only serving slots are available to the router. At time 0 the first
initial_replicas slots serve. Every interval_s (starting at 0) the policy decides from the serving
instances' scheduler stats (running, waiting, KV usage), the number starting and the number of
requests held at the router; then:
- scale up: draining instances go back into service first (they are still up: no cold start),
  then free slots start a fresh instance (empty KV cache, new scheduler) that serves
  cold_start_s later;
- scale down: starting instances are cancelled first (newest first), then serving ones drain
  (fewest outstanding requests first, ties: highest slot): the router sends them nothing more
  and they are removed once idle.
With nothing serving, an arriving request is held at the router (its wait is in its TTFT); when
nothing is starting either, it triggers a decision at once (as a Ray Serve handle reports
immediately to a deployment with no replica). Held requests are routed, in arrival order, when an
instance starts serving. Decisions stop when the last request finishes; the instance-seconds are
counted from each instance's start decision (initial ones: time 0) to its removal or that end.
"""

from __future__ import annotations

import functools
import math
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from corral.cluster.autoscaling import ReplicaMetrics, make_autoscaling_policy
from corral.request import Request
from corral.sim.autoscale_spec import SimAutoscaleSpec
from corral.sim.instance import SimInstance

if TYPE_CHECKING:
    from corral.sim.cluster import ClusterSimulator

_FREE, _STARTING, _SERVING, _DRAINING = range(4)


@dataclass(frozen=True, slots=True)
class AutoscaleResult:
    """What the autoscaler did. instance_lifetimes_s[k] is (start decision, removal or end) of
    SimResult.instances[k]; timeline holds (time, provisioned, serving) after each change
    (provisioned = starting + serving + draining)."""

    spec: SimAutoscaleSpec
    end_s: float  # when the last request finished
    instance_lifetimes_s: list[tuple[float, float]]
    timeline: list[tuple[float, int, int]]
    num_scale_ups: int  # decisions that raised the count
    num_scale_downs: int  # decisions that lowered it
    num_cold_starts: int  # instances started after time 0 (cancelled ones included)
    num_returned: int  # draining instances put back into service

    @property
    def instance_seconds(self) -> float:
        return sum(stop - start for start, stop in self.instance_lifetimes_s)

    @property
    def max_replicas(self) -> int:
        """The most instances provisioned at once."""
        return max(provisioned for _, provisioned, _ in self.timeline)

    @property
    def mean_replicas(self) -> float:
        """Instances provisioned, averaged over [0, end_s]."""
        return self.instance_seconds / self.end_s if self.end_s > 0 else float(self.max_replicas)


class SimAutoscaler:
    """Owns the slots' states for one ClusterSimulator (which calls the on_* hooks)."""

    def __init__(self, sim: ClusterSimulator, spec: SimAutoscaleSpec) -> None:
        self.sim = sim
        self.spec = spec
        self.policy = make_autoscaling_policy(spec.config)
        self.router = sim.prefill_router
        num_slots = len(sim.instances)
        self.states = [_FREE] * num_slots
        self._counts = [num_slots, 0, 0, 0]  # slots per state
        self.instances: list[SimInstance] = []  # every incarnation, in start order
        self._lifetimes: list[list[float]] = []  # [start, stop] per incarnation
        self._incarnation = [-1] * num_slots  # slot -> index in self.instances
        self._token = [0] * num_slots  # bumped to cancel a pending start
        self.held: deque[Request] = deque()
        self.timeline: list[tuple[float, int, int]] = []
        self.num_scale_ups = self.num_scale_downs = self.num_cold_starts = self.num_returned = 0
        self.is_done = not sim.workload.specs
        self.end_s = 0.0
        for index in range(spec.initial_replicas, num_slots):
            self.router.set_available(index, False)
        for index in range(spec.initial_replicas):
            self._open(index)
            self._set(index, _SERVING)
        self._note()

    # ----- hooks called by ClusterSimulator ----------------------------------------------------

    def start(self) -> None:
        """Schedule the first decision (time 0)."""
        self.sim.call_at(0.0, self._tick)

    def can_route(self) -> bool:
        return self._count(_SERVING) > 0

    def hold(self, request: Request) -> None:
        """Keep a request that found no serving instance until one serves."""
        self.held.append(request)
        if self._count(_STARTING) == 0:
            self._decide()

    def on_step_end(self, instance: SimInstance) -> None:
        if self.states[instance.index] == _DRAINING:
            self._remove_if_idle(instance.index)

    def on_finish(self) -> None:
        if len(self.sim._finished) == len(self.sim.workload.specs):
            self.is_done, self.end_s = True, self.sim.now

    def result(self) -> AutoscaleResult:
        end_s = self.end_s
        lifetimes = [(start, min(stop, end_s)) for start, stop in self._lifetimes]
        timeline = [entry for entry in self.timeline if entry[0] <= end_s]
        return AutoscaleResult(
            self.spec,
            end_s,
            lifetimes,
            timeline,
            self.num_scale_ups,
            self.num_scale_downs,
            self.num_cold_starts,
            self.num_returned,
        )

    # ----- decisions ---------------------------------------------------------------------------

    def _tick(self) -> None:
        if self.is_done:
            return
        for index, state in enumerate(self.states):
            if state == _DRAINING:
                self._remove_if_idle(index)
        self._decide()
        self.sim.call_at(self.sim.now + self.spec.interval_s, self._tick)

    def _decide(self) -> None:
        instances = self.sim.instances
        metrics = [
            ReplicaMetrics(
                instances[i].scheduler.num_running,
                instances[i].scheduler.num_waiting,
                instances[i].kv.usage,
            )
            for i, state in enumerate(self.states)
            if state == _SERVING
        ]
        num_starting = self._count(_STARTING)
        current = len(metrics) + num_starting
        desired = self.policy.decide(self.sim.now, metrics, num_starting, len(self.held))
        if desired > current:
            self.num_scale_ups += 1
            self._scale_up(desired - current)
        elif desired < current:
            self.num_scale_downs += 1
            self._scale_down(current - desired)
        else:
            return
        self._note()

    def _scale_up(self, count: int) -> None:
        for index, state in enumerate(self.states):
            if count and state == _DRAINING:
                self._set(index, _SERVING)
                self.router.set_available(index, True)
                self.num_returned += 1
                count -= 1
        for index, state in enumerate(self.states):
            if count and state == _FREE:
                self._cold_start(index)
                count -= 1

    def _scale_down(self, count: int) -> None:
        starting = [i for i, state in enumerate(self.states) if state == _STARTING]
        starting.sort(key=lambda i: (self._lifetimes[self._incarnation[i]][0], i), reverse=True)
        for index in starting[:count]:
            self._token[index] += 1  # its pending start is void
            self._close(index)
            count -= 1
        serving = [i for i, state in enumerate(self.states) if state == _SERVING]
        instances = self.sim.instances
        serving.sort(key=lambda i: (instances[i].num_outstanding_requests, -i))
        for index in serving[:count]:
            self._set(index, _DRAINING)
            self.router.set_available(index, False)
            self._remove_if_idle(index)

    # ----- slots -------------------------------------------------------------------------------

    def _cold_start(self, index: int) -> None:
        if self._incarnation[index] >= 0:  # the slot served before: a fresh instance
            sim = self.sim
            sim.instances[index] = SimInstance(
                index,
                sim.spec.instances[index],
                sim._clock,
                sim.spec.kv_sample_interval_s,
                sim.spec.seed,
                sim.spec.dashboard_interval_s,
                sim.spec.voting,
                sim.spec.structured,
            )
        self._open(index)
        self._set(index, _STARTING)
        self.num_cold_starts += 1
        self._token[index] += 1
        ready = functools.partial(self._ready, index, self._token[index])
        self.sim.call_at(self.sim.now + self.spec.cold_start_s, ready)

    def _ready(self, index: int, token: int) -> None:
        if token != self._token[index] or self.is_done:
            return
        self._set(index, _SERVING)
        self.router.set_available(index, True)
        self._note()
        held, self.held = self.held, deque()
        for request in held:
            self.sim._dispatch(request)

    def _remove_if_idle(self, index: int) -> None:
        instance = self.sim.instances[index]
        if (
            instance.is_busy
            or instance.is_wake_pending
            or instance.num_compiling
            or instance.scheduler.has_unfinished_requests()
        ):
            return
        self._close(index)
        prefix_index = self.router.prefix_index
        if prefix_index is not None:
            prefix_index.on_cleared(index)
        self._note()

    def _open(self, index: int) -> None:
        self._incarnation[index] = len(self.instances)
        self.instances.append(self.sim.instances[index])
        self._lifetimes.append([self.sim.now, math.inf])

    def _close(self, index: int) -> None:
        self._set(index, _FREE)
        self._lifetimes[self._incarnation[index]][1] = self.sim.now

    def _set(self, index: int, state: int) -> None:
        self._counts[self.states[index]] -= 1
        self._counts[state] += 1
        self.states[index] = state

    def _count(self, state: int) -> int:
        return self._counts[state]

    def _note(self) -> None:
        serving = self._count(_SERVING)
        entry = (self.sim.now, len(self.states) - self._count(_FREE), serving)
        if self.timeline and self.timeline[-1][0] == entry[0]:
            self.timeline[-1] = entry
        else:
            self.timeline.append(entry)
