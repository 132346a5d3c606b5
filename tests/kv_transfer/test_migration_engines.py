"""Live migration between two real engines (one process, a real socket between them): a request
moved mid-decode goes on at the other engine token-identical to an unmigrated run, with its KV
fetched, not recomputed; a bad transfer is recomputed; aborts at every stage leak no block."""

from __future__ import annotations

import time

import pytest

from corral import LLM, SamplingParams
from corral.kv_transfer.worker_half import FAULT_ENV
from tests.kv_transfer.test_disaggregation_engines import (
    PROMPT,
    STEP_TIMEOUT_S,
    assert_no_leak,
    drain,
    engine,
    run,
)

GREEDY = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)


@pytest.fixture(scope="module")
def single(tiny_model) -> LLM:
    return engine(tiny_model)


def step_until(llm: LLM, request_id: str, num_output_tokens: int) -> None:
    """Step until the request has generated num_output_tokens (it keeps running)."""
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while llm.engine.scheduler.requests[request_id].num_output_tokens < num_output_tokens:
        llm.engine.step()
        assert time.monotonic() < deadline


def migrate(source: LLM, request_id: str, num_output_tokens: int, params=GREEDY):
    """Run a migratable request on source until num_output_tokens, then move it out; returns
    the source's final output (finish reason "migrated")."""
    source.engine.add_request(request_id, PROMPT, params, migratable=True)
    step_until(source, request_id, num_output_tokens)
    (moved,) = source.engine.migrate_out(request_ids=[request_id])
    source.engine.step()  # as a server's loop would: the lease opens in the next step
    return moved


def test_a_migrated_request_equals_an_unmigrated_one(tiny_model, single):
    expected = run(single, "alone", GREEDY).outputs[0].token_ids
    source, target = engine(tiny_model, kv_role="both"), engine(tiny_model, kv_role="both")
    moved = migrate(source, "m1", 21)
    completion = moved.outputs[0]
    assert completion.finish_reason == "migrated"
    assert completion.token_ids == expected[:21]
    params = moved.kv_transfer_params
    num_tokens = len(moved.prompt_token_ids) + 21
    # Every computed full block is lent: the target computes at most one block's tokens.
    assert params["num_blocks"] == (num_tokens - 1) // 16
    assert params["resume_output_token_ids"] == expected[:21]
    output = run(target, "m1", GREEDY, kv_transfer_params=params, migratable=True)
    assert output.outputs[0].token_ids == expected  # the whole output, resumed part included
    assert output.outputs[0].text == single.generate([PROMPT], GREEDY)[0].outputs[0].text
    assert output.num_cached_tokens == 16 * params["num_blocks"]  # fetched, not recomputed
    drain(source)
    drain(target)
    assert source.engine.scheduler.connector.stats.num_leases_acked == 1
    assert_no_leak(source)
    assert_no_leak(target)


def test_twice_and_back(tiny_model, single):
    expected = run(single, "alone-2", GREEDY).outputs[0].token_ids
    a, b = engine(tiny_model, kv_role="both"), engine(tiny_model, kv_role="both")
    first = migrate(a, "m2", 5)
    b.engine.add_request("m2", PROMPT, GREEDY, kv_transfer_params=first.kv_transfer_params,
                         migratable=True)  # fmt: skip
    step_until(b, "m2", 30)
    (second,) = b.engine.migrate_out(request_ids=["m2"])
    b.engine.step()
    assert second.outputs[0].token_ids == expected[:30]
    output = run(a, "m2", GREEDY, kv_transfer_params=second.kv_transfer_params)
    assert output.outputs[0].token_ids == expected
    for llm in (a, b):
        drain(llm)
        assert_no_leak(llm)


def test_without_a_connector_the_target_recomputes(tiny_model, single):
    expected = run(single, "alone-3", GREEDY).outputs[0].token_ids
    source, target = engine(tiny_model), engine(tiny_model)
    moved = migrate(source, "m3", 9)
    assert set(moved.kv_transfer_params) == {"resume_output_token_ids"}  # nothing lent
    output = run(target, "m3", GREEDY, kv_transfer_params=moved.kv_transfer_params)
    assert output.outputs[0].token_ids == expected
    assert output.num_cached_tokens == 0
    assert_no_leak(source)
    assert_no_leak(target)


def test_a_corrupted_migration_is_recomputed_not_served(tiny_model, single, monkeypatch):
    expected = run(single, "alone-4", GREEDY).outputs[0].token_ids
    monkeypatch.setenv(FAULT_ENV, "corrupt")  # read by the lending worker at start
    source = engine(tiny_model, kv_role="both")
    monkeypatch.delenv(FAULT_ENV)
    target = engine(tiny_model, kv_role="both")
    moved = migrate(source, "m4", 17)
    output = run(target, "m4", GREEDY, kv_transfer_params=moved.kv_transfer_params)
    assert output.outputs[0].token_ids == expected
    assert output.num_cached_tokens == 0
    assert target.engine.scheduler.connector.stats.num_fetches_failed == 1
    drain(source)
    assert_no_leak(source)
    assert_no_leak(target)


def test_only_migratable_requests_move(tiny_model):
    # No target comes for the moved request: its lease expires (soon, not after the default).
    llm = engine(tiny_model, kv_role="both", kv_lease_timeout_s=0.5)
    llm.engine.add_request("plain", PROMPT, GREEDY)  # no router to continue it
    llm.engine.add_request("logprobs", PROMPT, GREEDY.clone(logprobs=2), migratable=True)
    seeded = SamplingParams(temperature=0.8, seed=3, max_tokens=40)
    llm.engine.add_request("seeded", PROMPT, seeded, migratable=True)
    llm.engine.add_request("ok", PROMPT, GREEDY, migratable=True)
    step_until(llm, "ok", 3)
    moved = llm.engine.migrate_out(max_num_requests=8)
    assert [output.request_id for output in moved] == ["ok"]
    llm.engine.abort_request(["plain", "logprobs", "seeded"])
    drain(llm)
    assert llm.engine.scheduler.connector.stats.num_leases_expired == 1  # the moved one's
    assert_no_leak(llm)


@pytest.mark.parametrize("stage", ["before_fetch", "while_parked", "after_admission"])
def test_aborts_at_every_stage_leak_nothing(tiny_model, stage):
    source = engine(tiny_model, kv_role="both", kv_lease_timeout_s=0.5)
    target = engine(tiny_model, kv_role="both")
    moved = migrate(source, f"a-{stage}", 18)
    if stage != "before_fetch":
        target.engine.add_request(
            f"a-{stage}", PROMPT, GREEDY, kv_transfer_params=moved.kv_transfer_params
        )
        target.engine.step()  # parked: its fetch starts
        if stage == "after_admission":
            step_until(target, f"a-{stage}", 20)
        target.engine.abort_request(f"a-{stage}")
    drain(target)
    drain(source)  # before_fetch: the target never came, the lease expires
    stats = source.engine.scheduler.connector.stats
    assert stats.num_leases_expired == (1 if stage == "before_fetch" else 0)
    assert_no_leak(source)
    assert_no_leak(target)


def test_a_resume_that_leaves_nothing_to_generate_is_refused(tiny_model):
    llm = engine(tiny_model)
    params = {"resume_output_token_ids": [5] * 40}
    with pytest.raises(ValueError, match="nothing is left to generate"):
        llm.engine.add_request("r", PROMPT, GREEDY, kv_transfer_params=params)
    with pytest.raises(ValueError, match="resume_output_token_ids"):
        llm.engine.add_request("r", PROMPT, GREEDY, kv_transfer_params={
            "resume_output_token_ids": ["x"]})  # fmt: skip


def test_precopy_then_the_final_stop_copies_only_new_blocks(tiny_model, single):
    expected = run(single, "alone-5", GREEDY).outputs[0].token_ids
    source, target = engine(tiny_model, kv_role="both"), engine(tiny_model, kv_role="both")
    source.engine.add_request("p1", PROMPT, GREEDY, migratable=True)
    step_until(source, "p1", 3)
    (item,) = source.engine.core.precopy(1)  # lent while it keeps running
    source.engine.step()  # the lease opens
    num_precopied = item["kv_transfer_params"]["num_blocks"]
    fetch_id = target.engine.core.prefetch(item["kv_transfer_params"], item["block_hashes"])
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while (done := target.engine.core.prefetch_result(fetch_id)) is None:
        target.engine.step()
        source.engine.step()
        assert time.monotonic() < deadline
    assert done is True
    step_until(source, "p1", 35)  # two more blocks fill meanwhile
    (moved,) = source.engine.migrate_out(request_ids=["p1"])
    source.engine.step()
    params = moved.kv_transfer_params
    assert params["num_blocks"] >= num_precopied + 2
    fetched = target.engine.scheduler.connector.stats
    bytes_before = fetched.fetched_bytes
    output = run(target, "p1", GREEDY, kv_transfer_params=params)
    assert output.outputs[0].token_ids == expected
    assert output.num_cached_tokens == 16 * params["num_blocks"]
    block_bytes = bytes_before // num_precopied
    # The final copy moved only the blocks filled after the pre-copy.
    assert fetched.fetched_bytes - bytes_before == block_bytes * (
        params["num_blocks"] - num_precopied
    )
    for llm in (source, target):
        drain(llm)
        assert_no_leak(llm)
    lender = source.engine.scheduler.connector.stats
    assert (lender.num_leases, lender.num_leases_acked) == (2, 2)


def test_a_prefetch_of_another_model_is_refused(tiny_model):
    target = engine(tiny_model, kv_role="both")
    params = {"do_remote_prefill": True, "transfer_id": "t", "endpoint": "tcp://127.0.0.1:1",
              "kv_identity": "other", "block_size": 16, "num_blocks": 2}  # fmt: skip
    assert target.engine.core.prefetch(params, ["00" * 32, "11" * 32]) is None
    assert_no_leak(target)
