"""Autoscaling policies: how many replicas a deployment should have now (torch-free).

One policy object, two homes: the cluster simulator (corral/sim/autoscale.py) and a real
deployment's controller call the same `decide()` with the same metrics, so a fleet sized in the
simulator behaves the same way deployed.

The controller's loop, every interval (the simulator's default: 1 s):

    desired = policy.decide(now_s, serving_metrics, num_starting, num_queued)
    start (desired - current) replicas, or stop (current - desired) of them

where current = len(serving_metrics) + num_starting. `serving_metrics` holds one ReplicaMetrics
per replica that serves (started, not draining): what its /metrics says
(vllm:num_requests_running, vllm:num_requests_waiting, vllm:kv_cache_usage_perc);
`num_starting` counts replicas started but not yet serving (cold start); `num_queued` counts
requests held in front of the replicas (at the router, given to no replica), e.g. while the
deployment is scaled to zero. A replica that is draining (being stopped) is not counted at all.

A policy is a plug-in registered by name in AUTOSCALING_POLICIES and built from an
AutoscalingConfig, itself parsed from a spec string such as
"target-ongoing:min=0,max=4,target=8,kv=0.9,up_delay_s=5,down_delay_s=30".
A policy object is stateful (its hysteresis clock): one object per deployment.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, fields

from corral.registry import Registry


@dataclass(frozen=True, slots=True)
class ReplicaMetrics:
    """One serving replica's load, as its /metrics reports it."""

    num_running: int  # vllm:num_requests_running
    num_waiting: int  # vllm:num_requests_waiting
    kv_cache_usage: float  # vllm:kv_cache_usage_perc, 0..1

    @property
    def num_ongoing(self) -> int:
        """Running + waiting requests: Ray Serve's "ongoing requests" of a replica."""
        return self.num_running + self.num_waiting


# spec key -> (AutoscalingConfig field, value type)
_SPEC_KEYS: dict[str, tuple[str, type]] = {
    "min": ("min_replicas", int),
    "max": ("max_replicas", int),
    "initial": ("initial_replicas", int),
    "target": ("target_ongoing_requests", float),
    "kv": ("kv_usage_threshold", float),
    "up_delay_s": ("upscale_delay_s", float),
    "down_delay_s": ("downscale_delay_s", float),
}


@dataclass(frozen=True, slots=True)
class AutoscalingConfig:
    """What an autoscaling policy is built from (defaults follow Ray Serve's where it has one).

    min_replicas: the fewest replicas (0: scale to zero when idle); max_replicas: the most.
    initial_replicas: how many the deployment starts with (None: the caller's default), clamped
    into [min_replicas, max_replicas] by initial_count().
    target_ongoing_requests: running + waiting requests per replica the policy aims at.
    kv_usage_threshold: mean KV usage of the serving replicas above which one more replica is
    wanted (1.0: never, since usage cannot exceed 1).
    upscale_delay_s / downscale_delay_s: how long a wish to scale up / down must hold before it
    takes effect (hysteresis).
    """

    policy: str = "target-ongoing"
    min_replicas: int = 1
    max_replicas: int = 1
    initial_replicas: int | None = None
    target_ongoing_requests: float = 2.0
    kv_usage_threshold: float = 0.9
    upscale_delay_s: float = 30.0
    downscale_delay_s: float = 600.0

    def __post_init__(self) -> None:
        if self.min_replicas < 0:
            raise ValueError(f"min_replicas must be >= 0, got {self.min_replicas}")
        if self.max_replicas < 1:
            raise ValueError(f"max_replicas must be >= 1, got {self.max_replicas}")
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas {self.min_replicas} exceeds max_replicas {self.max_replicas}"
            )
        if self.initial_replicas is not None and self.initial_replicas < 0:
            raise ValueError(f"initial_replicas must be >= 0, got {self.initial_replicas}")
        if not self.target_ongoing_requests > 0:
            raise ValueError(
                f"target_ongoing_requests must be > 0, got {self.target_ongoing_requests}"
            )
        if not 0 < self.kv_usage_threshold <= 1:
            raise ValueError(f"kv_usage_threshold must be in (0, 1], got {self.kv_usage_threshold}")
        for name in ("upscale_delay_s", "downscale_delay_s"):
            value = getattr(self, name)
            if not value >= 0:  # also refuses NaN
                raise ValueError(f"{name} must be >= 0, got {value}")

    @classmethod
    def parse(cls, spec: str) -> AutoscalingConfig:
        """ "NAME[:key=value,...]" with keys min, max, initial (integers), target, kv,
        up_delay_s, down_delay_s (numbers); unset keys keep the defaults. ValueError names an
        unknown policy, an unknown or repeated key, or a bad value."""
        name, _, options = spec.strip().partition(":")
        name = name.strip()
        if not name:
            raise ValueError(f"autoscaling spec {spec!r} names no policy (e.g. target-ongoing)")
        AUTOSCALING_POLICIES.get(name)  # ValueError naming the known ones
        values: dict[str, object] = {}
        for item in (part.strip() for part in options.split(",")):
            if not item:
                continue
            key, has_value, text = (s.strip() for s in item.partition("="))
            if key not in _SPEC_KEYS:
                raise ValueError(
                    f"unknown autoscaling key {key!r} in {spec!r}; known: {', '.join(_SPEC_KEYS)}"
                )
            if not has_value or not text:
                raise ValueError(f"autoscaling key {key!r} has no value in {spec!r}")
            field_name, kind = _SPEC_KEYS[key]
            if field_name in values:
                raise ValueError(f"autoscaling key {key!r} is given twice in {spec!r}")
            try:
                values[field_name] = kind(text)
            except ValueError:
                expected = "an integer" if kind is int else "a number"
                raise ValueError(f"autoscaling {key}={text!r}: expected {expected}") from None
        return cls(policy=name, **values)  # type: ignore[arg-type]

    def to_spec(self) -> str:
        """The spec string parse() turns back into this config (every key spelled out)."""
        by_field = {field_name: key for key, (field_name, _) in _SPEC_KEYS.items()}
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "policy" and value is not None:
                parts.append(f"{by_field[f.name]}={value:g}")
        return f"{self.policy}:{','.join(parts)}"

    def initial_count(self, default: int) -> int:
        """min(max, max(min, initial)), initial_replicas or else `default`."""
        initial = self.initial_replicas if self.initial_replicas is not None else default
        return min(self.max_replicas, max(self.min_replicas, initial))


class AutoscalingPolicy(ABC):
    """Decides the desired number of replicas from the replicas' metrics (module docstring)."""

    def __init__(self, config: AutoscalingConfig) -> None:
        self.config = config

    @abstractmethod
    def decide(
        self,
        now_s: float,
        replicas: Sequence[ReplicaMetrics],
        num_starting: int,
        num_queued: int = 0,
    ) -> int:
        """The desired number of replicas (serving + starting) at time now_s (seconds on any
        clock that does not go back); `replicas` are the serving ones' metrics, `num_starting`
        those still starting, `num_queued` the requests held in front of them. Always within
        [min_replicas, max_replicas], except that it may return the current count unchanged."""


AUTOSCALING_POLICIES: Registry[AutoscalingPolicy] = Registry("autoscaling policy")


@AUTOSCALING_POLICIES.register("target-ongoing")
class TargetOngoingRequests(AutoscalingPolicy):
    """Ray Serve's default rule with a KV-pressure term and time-based hysteresis.

    The wish, from the metrics now:
      ongoing = sum of the serving replicas' running + waiting requests + num_queued;
      wish = ceil(ongoing / target_ongoing_requests);
      if some replica serves and the serving replicas' mean KV usage exceeds kv_usage_threshold,
        wish = max(wish, number serving + 1) (starting replicas already count towards it, so
        the rule adds one replica at a time until the mean falls back);
      wish is clamped into [min_replicas, max_replicas].
    The decision, with current = serving + starting:
      wish == current: the pending wish, if any, is dropped; current is returned;
      current == 0 (scaled to zero) and wish > 0: wish at once (no delay: the requests that
        woke the deployment already pay the cold start);
      otherwise the wish must point the same way (up or down) for upscale_delay_s /
        downscale_delay_s (measured from the first call that saw it point that way) before it
        is returned; until then current is returned. The value returned is the latest wish,
        not the one first seen. A wish that turns round restarts the delay.
    """

    def __init__(self, config: AutoscalingConfig) -> None:
        super().__init__(config)
        self._direction = 0  # +1 wishing up, -1 wishing down, 0 content
        self._since_s = 0.0  # when the current direction was first seen

    def wish(self, replicas: Sequence[ReplicaMetrics], num_queued: int = 0) -> int:
        """The desired count from the metrics alone, before hysteresis (class docstring)."""
        config = self.config
        ongoing = sum(r.num_ongoing for r in replicas) + num_queued
        wish = math.ceil(ongoing / config.target_ongoing_requests)
        if replicas:
            mean_kv = sum(r.kv_cache_usage for r in replicas) / len(replicas)
            if mean_kv > config.kv_usage_threshold:
                wish = max(wish, len(replicas) + 1)
        return min(config.max_replicas, max(config.min_replicas, wish))

    def decide(
        self,
        now_s: float,
        replicas: Sequence[ReplicaMetrics],
        num_starting: int,
        num_queued: int = 0,
    ) -> int:
        if num_starting < 0 or num_queued < 0:
            raise ValueError(
                f"num_starting ({num_starting}) and num_queued ({num_queued}) must be >= 0"
            )
        current = len(replicas) + num_starting
        wish = self.wish(replicas, num_queued)
        if wish == current:
            self._direction = 0
            return current
        if current == 0:
            self._direction = 0
            return wish
        direction = 1 if wish > current else -1
        if direction != self._direction:
            self._direction, self._since_s = direction, now_s
        delay_s = self.config.upscale_delay_s if direction > 0 else self.config.downscale_delay_s
        if now_s - self._since_s >= delay_s:
            self._direction = 0
            return wish
        return current


def make_autoscaling_policy(config: AutoscalingConfig | str) -> AutoscalingPolicy:
    """The registered policy of a config (or of a spec string); ValueError naming the known
    policies for an unknown one."""
    if isinstance(config, str):
        config = AutoscalingConfig.parse(config)
    return AUTOSCALING_POLICIES.get(config.policy)(config)
