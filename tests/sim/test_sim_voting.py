"""Self-consistency in the simulator: with stop_when_agreed, a request's samples still running
or queued stop once k finished ones agree (answers drawn by corral/sim/voting.py), through the
engine's scheduler; without agreement every sample runs."""

from __future__ import annotations

import pytest

from corral.config import SchedulerConfig
from corral.sim.config import ClusterSpec, InstanceSpec
from corral.sim.voting import Ballots, SimVoting
from tests.sim.helpers import LINEAR_PROFILE, run, spec, workload

NUM_SAMPLES, OUTPUT_LEN = 8, 40


def one_at_a_time(voting: SimVoting | None, num_requests: int = 3):
    # max_num_seqs 4: a request's 8 samples run 4 at a time, so 4 finish before the rest start.
    instance = InstanceSpec(
        cost_model=LINEAR_PROFILE,
        num_blocks=512,
        max_model_len=1024,
        scheduler=SchedulerConfig(max_num_seqs=4),
    )
    specs = [
        spec(f"r{i}", 10.0 * i, 64, OUTPUT_LEN, samples_per_request=NUM_SAMPLES)
        for i in range(num_requests)
    ]
    cluster = ClusterSpec(instances=(instance,), check_integrity=True, voting=voting)
    return run(cluster, workload(*specs))


def test_agreement_stops_the_queued_samples():
    result = one_at_a_time(SimVoting(stop_when_agreed=2, answer_accuracy=1.0))
    for record in result.records:
        # The first four samples run to the end and agree; the leader, a step ahead, made room
        # for a fifth that got no further than a few tokens; the other three never ran.
        assert 4 * OUTPUT_LEN <= record.num_output_tokens < 5 * OUTPUT_LEN
    instance = result.instances[0]
    assert not instance.scheduler.has_unfinished_requests()
    assert instance.kv.num_free_blocks == instance.kv.num_blocks


def test_without_agreement_every_sample_runs():
    # 1000 wrong answers and no right one: two finished samples almost never agree.
    voting = SimVoting(stop_when_agreed=2, answer_accuracy=0.0, num_wrong_answers=10**6)
    for result in (one_at_a_time(voting), one_at_a_time(None)):
        assert all(r.num_output_tokens == NUM_SAMPLES * OUTPUT_LEN for r in result.records)


def test_ballots_follow_the_accuracy_and_refuse_bad_settings():
    ballots = Ballots(SimVoting(stop_when_agreed=3, answer_accuracy=1.0), seed=0)
    assert [ballots.cast("a") for _ in range(3)] == [False, False, True]
    ballots.forget("a")
    assert ballots.cast("a") is False
    for bad, named in [
        (dict(stop_when_agreed=1), "stop_when_agreed"),
        (dict(stop_when_agreed=2, answer_accuracy=1.5), "answer_accuracy"),
        (dict(stop_when_agreed=2, num_wrong_answers=0), "num_wrong_answers"),
    ]:
        with pytest.raises(ValueError, match=named):
            SimVoting(**bad)


def test_spread_lengths_let_agreement_stop_the_slower_samples():
    # All 8 samples run at once (max_num_seqs 128); with equal lengths they finish together and
    # agreement saves nothing; with lengths spread over (50%, 100%] the fast ones agree first.
    def total_tokens(voting: SimVoting) -> int:
        instance = InstanceSpec(cost_model=LINEAR_PROFILE, num_blocks=1024, max_model_len=1024)
        specs = [spec(f"r{i}", 0.0, 64, 200, samples_per_request=NUM_SAMPLES) for i in range(4)]
        cluster = ClusterSpec(instances=(instance,), check_integrity=True, voting=voting)
        return sum(r.num_output_tokens for r in run(cluster, workload(*specs)).records)

    full = 4 * NUM_SAMPLES * 200
    assert total_tokens(SimVoting(stop_when_agreed=2, answer_accuracy=1.0)) == full
    never = SimVoting(stop_when_agreed=9, sample_length_spread=0.5)  # 9 > 8: never agreed
    spread_only = total_tokens(never)
    assert full * 0.5 < spread_only < full
    agreed = SimVoting(stop_when_agreed=2, answer_accuracy=1.0, sample_length_spread=0.5)
    assert total_tokens(agreed) < spread_only
