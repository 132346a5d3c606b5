"""Priority scheduling: smaller numbers first; a higher-priority arrival preempts running
lower-priority work, and the victim resumes with exactly the output it would have produced."""

from __future__ import annotations

import pytest

from corral.request import RequestStatus
from corral.sampling_params import SamplingParams
from tests.core.policy_driver import Driver, VirtualClock, job, make_policy_scheduler


def test_smaller_numbers_run_first_and_equal_priorities_keep_arrival_order():
    clock = VirtualClock()
    scheduler = make_policy_scheduler("priority", clock, max_num_seqs=1)
    driver = Driver(scheduler, clock)
    driver.submit(
        job(0.0, 2, priority=2, request_id="low"),
        job(0.0, 2, priority=0, request_id="high"),
        job(0.0, 2, priority=1, request_id="mid-a"),
        job(0.0, 2, priority=1, request_id="mid-b"),
    )
    run = driver.run()
    assert sorted(run.finish_s, key=run.finish_s.get) == ["high", "mid-a", "mid-b", "low"]


@pytest.mark.parametrize("preempt", [True, False])
def test_a_higher_priority_arrival_preempts_running_lower_priority_work(preempt):
    clock = VirtualClock()
    scheduler = make_policy_scheduler(f"priority:preempt={preempt}", clock, max_num_seqs=1)
    driver = Driver(scheduler, clock)
    low = job(0.0, 10, priority=5, request_id="low")
    urgent = job(3.0, 2, priority=0, request_id="urgent")
    driver.submit(low, urgent)
    run = driver.run()
    if preempt:
        assert low.num_preemptions == 1
        assert run.finish_s["urgent"] == 5.0  # admitted at t=3 in the step that preempted low
        assert run.finish_s["low"] == 12.0
    else:
        assert low.num_preemptions == 0
        assert run.finish_s["low"] == 10.0 and run.finish_s["urgent"] == 12.0
    assert low.num_output_tokens == 10 and low.status == RequestStatus.FINISHED_LENGTH


def test_equal_priority_does_not_preempt_and_kv_victims_are_the_lowest_priority():
    clock = VirtualClock()
    # 6 blocks of 4: three requests of 4 prompt tokens growing to 12 cannot all fit.
    scheduler = make_policy_scheduler("priority", clock, num_blocks=6, max_num_seqs=3)
    driver = Driver(scheduler, clock)
    first = job(0.0, 8, num_prompt_tokens=4, priority=1)
    second = job(0.0, 8, num_prompt_tokens=4, priority=0)
    third = job(0.0, 8, num_prompt_tokens=4, priority=1)
    driver.submit(first, second, third)
    driver.run()
    assert second.num_preemptions == 0
    assert scheduler.num_preemptions >= 1
    assert all(r.num_output_tokens == 8 for r in (first, second, third))


def test_priority_preemption_resumes_with_identical_output_on_a_real_model(tiny_model):
    from corral.llm import LLM

    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    prompt = "The quick brown fox jumps over the lazy dog"
    urgent_prompt = "How many apples are left"
    llm = LLM(
        model=str(tiny_model),
        dtype="float32",
        scheduling_policy="priority",
        num_blocks=32,
        block_size=16,
        max_num_seqs=1,
        max_model_len=256,
        debug_check_integrity=True,
    )
    alone = {
        out.prompt: out.outputs[0].token_ids
        for out in llm.generate([prompt, urgent_prompt], params, use_tqdm=False)
    }
    engine = llm.engine
    engine.add_request("low", prompt, params, priority=1)
    for _ in range(6):
        engine.step()
    engine.add_request("urgent", urgent_prompt, params, priority=0)
    finished_order, tokens = [], {}
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.finished:
                finished_order.append(output.request_id)
                tokens[output.request_id] = output.outputs[0].token_ids
    assert engine.scheduler.num_preemptions == 1
    assert finished_order == ["urgent", "low"]
    assert tokens["low"] == alone[prompt]
    assert tokens["urgent"] == alone[urgent_prompt]
