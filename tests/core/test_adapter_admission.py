"""Adapter-aware admission in the real scheduler with a fake executor (torch-free)."""

from __future__ import annotations

import pytest

from corral.config import LoRAConfig, SchedulerConfig
from corral.core.kv_cache import KVCacheManager
from corral.core.scheduler import Scheduler
from corral.lora.adapter import AdapterRef
from corral.request import Request
from corral.sampling_params import SamplingParams
from tests.core.fake_executor import FakeExecutor

_count = iter(range(10**6))


def ref(name: str) -> AdapterRef:
    return AdapterRef(name, f"/adapters/{name}", name * 8, 8, 1000, 4000)


def request(adapter: AdapterRef | None, max_tokens: int = 4, prompt: int = 6) -> Request:
    index = next(_count)
    return Request(
        f"q{index}",
        list(range(1, prompt + 1)),
        SamplingParams(max_tokens=max_tokens),
        max_model_len=256,
        arrival_time=float(index),
        lora=adapter,
    )


def make(max_loras: int = 1, **lora: object) -> Scheduler:
    return Scheduler(
        SchedulerConfig(max_num_batched_tokens=256),
        KVCacheManager(128, 4),
        256,
        lora=LoRAConfig(enable_lora=True, max_loras=max_loras, **lora),  # type: ignore[arg-type]
    )


def test_requests_of_a_pinned_slot_overtake_a_request_waiting_for_one():
    scheduler = make(max_loras=1)
    a, b = ref("a"), ref("b")
    first, blocked, same, base = request(a, 8), request(b), request(a), request(None)
    for item in (first, blocked, same, base):
        scheduler.add_request(item)
    output = scheduler.schedule()
    # b's request waits for a's slot; a's second request and the base request go ahead.
    assert set(output.num_scheduled_tokens) == {first.request_id, same.request_id, base.request_id}
    assert [n.lora_slot for n in output.new_requests] == [0, 0, None]
    assert scheduler.num_waiting == 1 and scheduler.stats().lora.num_bypasses == 2
    assert {load.adapter.name for load in output.adapter_plan.loads} == {"a"}
    fake = FakeExecutor(scheduler)
    scheduler.update(output, fake.execute(output))
    outputs = fake.run()
    assert set(outputs) >= {blocked.request_id}
    loads = [
        load.adapter.name
        for step in fake.steps
        if step.adapter_plan
        for load in step.adapter_plan.loads
    ]
    assert loads == ["a", "b"]  # b's only once a's requests finished
    assert scheduler.adapters.residency.num_in_use == 0
    scheduler.adapters.residency.check_integrity()


def test_the_fairness_bound_stops_overtaking():
    scheduler = make(max_loras=1, max_num_lora_bypasses=1)
    a, b = ref("a"), ref("b")
    running, blocked = request(a, 20), request(b)
    late = [request(a, 2) for _ in range(3)]
    for item in (running, blocked, *late):
        scheduler.add_request(item)
    output = scheduler.schedule()
    # One request of a may overtake b's; then nothing does until a's slot frees.
    assert set(output.num_scheduled_tokens) == {running.request_id, late[0].request_id}
    fake = FakeExecutor(scheduler)
    scheduler.update(output, fake.execute(output))
    order = []
    while scheduler.has_unfinished_requests():
        step = scheduler.schedule()
        order += [new.request_id for new in step.new_requests]
        scheduler.update(step, fake.execute(step))
    assert order == [blocked.request_id, late[1].request_id, late[2].request_id]


def test_aborting_a_blocked_request_and_refusing_adapters_when_lora_is_off():
    scheduler = make(max_loras=1)
    running, blocked = request(ref("a"), 20), request(ref("b"))
    scheduler.add_request(running)
    scheduler.add_request(blocked)
    scheduler.schedule()
    assert scheduler.num_waiting == 1
    scheduler.finish_requests([blocked.request_id])
    assert scheduler.num_waiting == 0 and not scheduler.adapters.blocked
    plain = Scheduler(SchedulerConfig(), KVCacheManager(16, 4), 256)
    with pytest.raises(ValueError, match="LoRA is off"):
        plain.add_request(request(ref("a")))


def test_preemption_unpins_and_prefix_cache_keys_include_the_adapter_identity():
    scheduler = make(max_loras=2)
    a = ref("a")
    reloaded = AdapterRef("a", "/adapters/a", "f" * 64, 8, 1000, 4000)  # same name, new weights
    first = request(a, 2, prompt=12)
    fake = FakeExecutor(scheduler)
    scheduler.add_request(first)
    fake.run()
    again, other, base = request(a, 2, 12), request(reloaded, 2, 12), request(None, 2, 12)
    for item in (again, other, base):
        scheduler.add_request(item)
    fake.run()
    assert again.num_cached_tokens == 8  # two full blocks of the same adapter's KV
    assert other.num_cached_tokens == 0 and base.num_cached_tokens == 0
