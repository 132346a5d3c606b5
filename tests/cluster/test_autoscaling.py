"""The autoscaling policy (corral/cluster/autoscaling.py): decisions and spec parsing."""

from __future__ import annotations

import pytest

from corral.cluster.autoscaling import (
    AUTOSCALING_POLICIES,
    AutoscalingConfig,
    ReplicaMetrics,
    TargetOngoingRequests,
    make_autoscaling_policy,
)


def busy(num_running: int, num_waiting: int = 0, kv: float = 0.1) -> ReplicaMetrics:
    return ReplicaMetrics(num_running, num_waiting, kv)


IDLE = ReplicaMetrics(0, 0, 0.0)


def policy(spec: str) -> TargetOngoingRequests:
    made = make_autoscaling_policy(spec)
    assert isinstance(made, TargetOngoingRequests)
    return made


def test_scales_up_to_ceil_of_ongoing_over_target():
    scaler = policy("target-ongoing:min=1,max=10,target=4,up_delay_s=0")
    # 9 running + 8 waiting on two replicas = 17 ongoing -> ceil(17 / 4) = 5
    assert scaler.decide(0.0, [busy(5, 4), busy(4, 4)], 0) == 5
    # requests held at the router count as ongoing too: 17 + 3 = 20 -> 5; + 4 -> 6
    assert scaler.decide(1.0, [busy(5, 4), busy(4, 4)], 0, num_queued=7) == 6


def test_starting_replicas_count_towards_the_current_size():
    scaler = policy("target-ongoing:min=1,max=10,target=4,up_delay_s=0,down_delay_s=0")
    # 16 ongoing wants 4; 2 serving + 2 starting already make 4: nothing to do.
    assert scaler.decide(0.0, [busy(8), busy(8)], 2) == 4


def test_upscale_waits_for_its_delay_and_takes_the_latest_wish():
    scaler = policy("target-ongoing:min=1,max=10,target=2,up_delay_s=5")
    assert scaler.decide(10.0, [busy(6)], 0) == 1  # wishes 3 from t=10
    assert scaler.decide(12.0, [busy(8)], 0) == 1  # wishes 4, still within the delay
    assert scaler.decide(14.9, [busy(8)], 0) == 1
    assert scaler.decide(15.0, [busy(10)], 0) == 5  # held 5 s: the latest wish (5)


def test_a_wish_that_goes_away_restarts_the_delay():
    scaler = policy("target-ongoing:min=1,max=10,target=2,up_delay_s=5,down_delay_s=5")
    assert scaler.decide(0.0, [busy(6)], 0) == 1  # up from t=0
    assert scaler.decide(3.0, [busy(2)], 0) == 1  # content: the pending wish is dropped
    assert scaler.decide(4.0, [busy(6)], 0) == 1  # up again, from t=4
    assert scaler.decide(8.0, [busy(6)], 0) == 1
    assert scaler.decide(9.0, [busy(6)], 0) == 3


def test_downscale_has_its_own_longer_delay():
    scaler = policy("target-ongoing:min=1,max=10,target=2,up_delay_s=1,down_delay_s=30")
    replicas = [IDLE, IDLE, IDLE, busy(1)]  # 1 ongoing wants 1 of 4
    assert scaler.decide(0.0, replicas, 0) == 4
    assert scaler.decide(29.0, replicas, 0) == 4
    assert scaler.decide(30.0, replicas, 0) == 1


def test_scale_to_zero_after_idle_and_back_at_once():
    scaler = policy("target-ongoing:min=0,max=4,target=8,up_delay_s=60,down_delay_s=10")
    assert scaler.decide(0.0, [IDLE], 0) == 1
    assert scaler.decide(9.0, [IDLE], 0) == 1
    assert scaler.decide(10.0, [IDLE], 0) == 0
    assert scaler.decide(11.0, [], 0) == 0  # nothing to serve: stays at zero
    # A request held at the router wakes the deployment with no upscale delay ...
    assert scaler.decide(12.0, [], 0, num_queued=1) == 1
    # ... and while that replica starts, nothing more is wished.
    assert scaler.decide(13.0, [], 1, num_queued=3) == 1


def test_min_replicas_keeps_a_floor_when_idle():
    scaler = policy("target-ongoing:min=2,max=4,down_delay_s=0")
    assert scaler.decide(0.0, [IDLE, IDLE, IDLE], 0) == 2
    assert scaler.decide(1.0, [IDLE, IDLE], 0) == 2


def test_max_replicas_caps_the_wish():
    scaler = policy("target-ongoing:min=1,max=3,target=1,up_delay_s=0")
    assert scaler.decide(0.0, [busy(50, 50)], 0) == 3
    assert scaler.wish([busy(50, 50)]) == 3


def test_kv_pressure_adds_one_replica_at_a_time():
    scaler = policy("target-ongoing:min=1,max=8,target=100,kv=0.8,up_delay_s=0")
    full = [busy(2, kv=0.95), busy(2, kv=0.9)]  # load alone wants 1
    assert scaler.decide(0.0, full, 0) == 3
    # The one starting counts: no second replica for the same pressure.
    assert scaler.decide(1.0, full, 1) == 3
    # Mean usage at the threshold is not above it: load decides (down, after the delay).
    assert scaler.wish([busy(2, kv=0.8), busy(2, kv=0.8)]) == 1
    # kv=1 turns the rule off: usage cannot exceed 1.
    assert policy("target-ongoing:target=100,kv=1,max=8").wish([busy(2, kv=1.0)]) == 1


def test_spec_round_trip_and_defaults():
    config = AutoscalingConfig.parse(
        "target-ongoing:min=0,max=4,target=8,kv=0.9,up_delay_s=5,down_delay_s=30"
    )
    assert config == AutoscalingConfig("target-ongoing", 0, 4, None, 8.0, 0.9, 5.0, 30.0)
    assert AutoscalingConfig.parse(config.to_spec()) == config
    assert AutoscalingConfig.parse("target-ongoing") == AutoscalingConfig()
    assert "target-ongoing" in AUTOSCALING_POLICIES.names()


def test_initial_count_is_clamped():
    config = AutoscalingConfig.parse("target-ongoing:min=1,max=4")
    assert [config.initial_count(n) for n in (0, 1, 3, 9)] == [1, 1, 3, 4]
    assert AutoscalingConfig.parse("target-ongoing:min=0,max=4,initial=0").initial_count(2) == 0


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "names no policy"),
        ("queue-length:max=2", "unknown autoscaling policy 'queue-length'"),
        ("target-ongoing:maximum=2", "unknown autoscaling key 'maximum'"),
        ("target-ongoing:max", "key 'max' has no value"),
        ("target-ongoing:max=", "key 'max' has no value"),
        ("target-ongoing:max=2,max=3", "given twice"),
        ("target-ongoing:max=2.5", r"max='2.5': expected an integer"),
        ("target-ongoing:target=many", r"target='many': expected a number"),
        ("target-ongoing:min=3,max=2", "min_replicas 3 exceeds max_replicas 2"),
        ("target-ongoing:min=-1", "min_replicas must be >= 0, got -1"),
        ("target-ongoing:max=0", "max_replicas must be >= 1, got 0"),
        ("target-ongoing:target=0", "target_ongoing_requests must be > 0"),
        ("target-ongoing:kv=1.5", r"kv_usage_threshold must be in \(0, 1\], got 1.5"),
        ("target-ongoing:up_delay_s=-1", "upscale_delay_s must be >= 0"),
        ("target-ongoing:down_delay_s=nan", "downscale_delay_s must be >= 0"),
    ],
)
def test_bad_specs_are_refused_clearly(spec, message):
    with pytest.raises(ValueError, match=message):
        AutoscalingConfig.parse(spec)


def test_negative_counts_are_refused():
    with pytest.raises(ValueError, match="must be >= 0"):
        policy("target-ongoing").decide(0.0, [], -1)
