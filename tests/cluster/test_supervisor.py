"""ReplicaSupervisor: an exited replica is restarted after a doubling backoff, at most
max_restarts times; running ones are left alone; a long run resets the count."""

from __future__ import annotations

import pytest

from corral.cluster.supervisor import FIRST_BACKOFF_S, RESET_AFTER_S, ReplicaSupervisor


class FakeProcess:
    def __init__(self) -> None:
        self.code: int | None = None

    def poll(self) -> int | None:
        return self.code


class FakeReplica:
    def __init__(self, index: int) -> None:
        self.index = index
        self.process = FakeProcess()
        self.num_starts = 1

    def restart(self) -> None:
        self.process = FakeProcess()
        self.num_starts += 1


def test_restarts_after_backoff_up_to_the_limit():
    replicas = [FakeReplica(0), FakeReplica(1)]
    supervisor = ReplicaSupervisor(replicas, max_restarts=2)
    now = 100.0
    replicas[1].process.code = -9  # killed
    supervisor.check(now)  # noticed: restart scheduled, not yet done
    assert [r.num_starts for r in replicas] == [1, 1]
    supervisor.check(now + FIRST_BACKOFF_S)
    assert [r.num_starts for r in replicas] == [1, 2]
    replicas[1].process.code = 1  # again: the backoff doubles
    supervisor.check(now + 2)
    supervisor.check(now + 2 + FIRST_BACKOFF_S)
    assert replicas[1].num_starts == 2
    supervisor.check(now + 2 + 2 * FIRST_BACKOFF_S)
    assert replicas[1].num_starts == 3
    replicas[1].process.code = 1  # past the limit: left down
    for step in range(10):
        supervisor.check(now + 10 + 100 * step)
    assert replicas[1].num_starts == 3 and replicas[0].num_starts == 1


def test_a_long_run_resets_the_count_and_zero_means_never():
    replica = FakeReplica(0)
    supervisor = ReplicaSupervisor([replica], max_restarts=1)
    replica.process.code = 1
    supervisor.check(0.0)
    supervisor.check(FIRST_BACKOFF_S)
    assert replica.num_starts == 2
    supervisor.check(FIRST_BACKOFF_S + RESET_AFTER_S)  # ran long enough: count reset
    replica.process.code = 1
    supervisor.check(FIRST_BACKOFF_S + RESET_AFTER_S + 1)
    supervisor.check(FIRST_BACKOFF_S + RESET_AFTER_S + 1 + FIRST_BACKOFF_S)
    assert replica.num_starts == 3
    with pytest.raises(ValueError, match="--max-replica-restarts"):
        ReplicaSupervisor([replica], max_restarts=-1)
