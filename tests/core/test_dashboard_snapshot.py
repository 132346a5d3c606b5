"""The dashboard's view of a scheduler (corral/core/dashboard_snapshot.py): request states and
policy order, and a block map that agrees with the pool's own accounting."""

from __future__ import annotations

from collections import Counter

from corral.core.dashboard_snapshot import (
    KV_CACHED,
    KV_FREE,
    KV_OWNED,
    KV_SHARED,
    kv_snapshot,
    requests_snapshot,
    scheduler_snapshot,
)
from corral.core.messages import SchedulerOutput
from corral.core.step_timeline import StepTimeline
from tests.core.fake_executor import FakeExecutor
from tests.core.helpers import make_request
from tests.core.test_scheduler import make_scheduler


def _step(scheduler, fake):
    output = scheduler.schedule()
    scheduler.update(output, fake.execute(output))
    return output


def _check_map_matches_pool(scheduler) -> dict:
    kv = kv_snapshot(scheduler)
    num_free, num_evictable, num_in_use = scheduler.kv.pool.check_integrity()
    assert kv["num_free"] == num_free and kv["num_cached"] == num_evictable
    in_use = kv["num_held"] + kv["num_shared"] + sum(kv["num_owned"].values())
    assert in_use == num_in_use
    assert len(kv["cells"]) == kv["num_blocks"] == scheduler.kv.num_blocks
    counts = Counter(kv["cells"])
    assert counts[KV_FREE] == num_free and counts[KV_CACHED] == num_evictable
    return kv


def test_states_progress_and_block_owners_follow_the_scheduler():
    scheduler = make_scheduler(num_blocks=16, block_size=4, max_num_batched_tokens=6)
    tenant = make_request(12, max_tokens=3)
    tenant.client_id = "alice"
    plain = make_request(4, max_tokens=3)
    for request in (tenant, plain):
        scheduler.add_request(request)
    fake = FakeExecutor(scheduler)
    snapshot = requests_snapshot(scheduler)
    assert [r["state"] for r in snapshot["waiting"]] == ["waiting", "waiting"]
    assert snapshot["waiting_order"] == "policy" and snapshot["policy"] == "FCFSPolicy"

    _step(scheduler, fake)  # 6 of tenant's 12 prompt tokens
    snapshot = scheduler_snapshot(scheduler)
    (row,) = snapshot["requests"]["running"]
    assert row["id"] == tenant.request_id and row["state"] == "prefill"
    assert (row["num_computed_tokens"], row["num_prompt_tokens"]) == (6, 12)
    assert row["owner"] == "tenant:alice" and row["num_blocks"] == 2
    assert [r["id"] for r in snapshot["requests"]["waiting"]] == [plain.request_id]
    kv = _check_map_matches_pool(scheduler)
    assert kv["owners"] == ["tenant:alice"] and kv["num_owned"] == {"tenant:alice": 2}

    _step(scheduler, fake)  # the rest of tenant's prompt: its first token
    snapshot = requests_snapshot(scheduler)
    states = {r["id"]: r["state"] for r in snapshot["running"]}
    assert states[tenant.request_id] == "decode"
    _check_map_matches_pool(scheduler)

    fake.run()
    kv = _check_map_matches_pool(scheduler)
    assert kv["num_cached"] > 0 and not kv["owners"]  # finished: blocks stay as cache entries
    assert requests_snapshot(scheduler)["running"] == []


def test_a_shared_prefix_is_shown_as_shared():
    scheduler = make_scheduler(num_blocks=16, block_size=4)
    first = make_request(list(range(1, 13)), max_tokens=8)
    scheduler.add_request(first)
    fake = FakeExecutor(scheduler)
    _step(scheduler, fake)
    second = make_request(list(range(1, 13)) + [50, 51], max_tokens=8)
    scheduler.add_request(second)
    _step(scheduler, fake)
    kv = _check_map_matches_pool(scheduler)
    assert Counter(kv["cells"])[KV_SHARED] == kv["num_shared"] >= 2
    assert Counter(kv["cells"])[KV_OWNED] == kv["num_owned"]["default"]


def test_preempted_requests_are_shown_preempted():
    scheduler = make_scheduler(num_blocks=6, block_size=4)
    first, second = make_request(8, max_tokens=12), make_request(8, max_tokens=12)
    scheduler.add_request(first)
    scheduler.add_request(second)
    fake = FakeExecutor(scheduler)
    seen = set()
    while scheduler.has_unfinished_requests():
        _step(scheduler, fake)
        snapshot = requests_snapshot(scheduler)
        seen |= {(r["id"], r["state"]) for r in snapshot["waiting"]}
        _check_map_matches_pool(scheduler)
    assert (second.request_id, "preempted") in seen


def test_waiting_order_is_the_policys_admission_order():
    scheduler = make_scheduler(num_blocks=64, block_size=4, policy="sjf", max_num_seqs=1)
    long, short, middle = (
        make_request(40, max_tokens=2),
        make_request(4, max_tokens=2),
        make_request(20, max_tokens=2),
    )
    for request in (long, short, middle):
        scheduler.add_request(request)
    order = [r["id"] for r in requests_snapshot(scheduler)["waiting"]]
    admitted: list[str] = []
    fake = FakeExecutor(scheduler)
    while scheduler.has_unfinished_requests():
        for new in _step(scheduler, fake).new_requests:
            admitted.append(new.request_id)
    assert order == admitted


def test_a_large_pool_is_binned_to_the_cell_limit():
    scheduler = make_scheduler(num_blocks=100, block_size=4)
    scheduler.add_request(make_request(40, max_tokens=2))
    _step(scheduler, FakeExecutor(scheduler))
    kv = kv_snapshot(scheduler, max_num_cells=25)
    assert kv["blocks_per_cell"] == 4 and len(kv["cells"]) == 25
    assert kv["num_owned"] == {"default": 10}  # counted per block, not per cell
    assert Counter(kv["cells"])[KV_OWNED] in (2, 3)  # 10 blocks: 2 full cells and a half one


def test_step_timeline_keeps_the_last_steps_and_reads_after_a_cursor():
    timeline = StepTimeline(max_num_steps=3)
    for i in range(5):
        output = SchedulerOutput([], [], {"a": 1, "b": 7}, 8)
        timeline.record(output, float(i), float(i) + 0.5)
    steps = timeline.since(0)
    assert [s[0] for s in steps] == [3, 4, 5]
    assert steps[-1][2:] == [0.5, 8, 2, 1, 0]
    assert [s[0] for s in timeline.since(4)] == [5] and timeline.since(5) == []
