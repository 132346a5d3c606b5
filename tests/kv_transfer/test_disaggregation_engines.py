"""Prefill/decode disaggregation between two real engines (in one process: the transfer server
and the fetch run on their own threads, the bytes cross a real socket): the decode engine's
greedy output equals a single engine's; a corrupted or refused transfer is recomputed, never
served; aborts and lease timeouts leave both pools with zero leaked blocks."""

from __future__ import annotations

import time

import pytest

from corral import LLM, SamplingParams
from corral.kv_transfer import worker_half
from corral.kv_transfer.worker_half import FAULT_ENV

PROMPT = "The quick brown fox jumps over the lazy dog. " * 6  # several 16-token blocks
STEP_TIMEOUT_S = 60.0


def engine(tiny_model, **kwargs) -> LLM:
    return LLM(
        model=str(tiny_model), dtype="float32", num_blocks=64, max_model_len=512,
        debug_check_integrity=True, **kwargs,
    )  # fmt: skip


@pytest.fixture(scope="module")
def single(tiny_model) -> LLM:
    return engine(tiny_model)


def run(llm: LLM, request_id: str, params: SamplingParams, **fields):
    """Add one request and step until it finishes; returns its final output."""
    llm.engine.add_request(request_id, PROMPT, params, **fields)
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while True:
        for output in llm.engine.step():
            if output.request_id == request_id and output.finished:
                return output
        assert time.monotonic() < deadline, "the request did not finish"
        time.sleep(0.001)


def drain(llm: LLM, timeout_s: float = STEP_TIMEOUT_S) -> None:
    """Step until nothing is pending (leases released, fetches reported)."""
    deadline = time.monotonic() + timeout_s
    while llm.engine.has_unfinished_requests():
        llm.engine.step()
        assert time.monotonic() < deadline, "KV transfers still pending"
        time.sleep(0.001)


def assert_no_leak(llm: LLM) -> None:
    kv = llm.engine.kv_manager
    kv.check_integrity()
    assert kv.pool.usage == 0.0, kv.pool.usage  # no block held by anyone


GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
FIRST = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)


def prefill_then_decode(prefill: LLM, decode: LLM, request_id: str):
    lent = run(prefill, request_id, FIRST, kv_transfer_params={"do_remote_decode": True})
    prefill.engine.step()  # as a server's loop would: the lease opens in the next step
    params = lent.kv_transfer_params
    assert params is not None and params["num_blocks"] == (len(lent.prompt_token_ids) - 1) // 16
    output = run(decode, request_id, GREEDY, kv_transfer_params=params)
    drain(prefill)
    drain(decode)
    return lent, output


def test_decode_after_remote_prefill_equals_one_engine(tiny_model, single):
    expected = run(single, "alone", GREEDY).outputs[0].token_ids
    prefill, decode = engine(tiny_model, kv_role="prefill"), engine(tiny_model, kv_role="decode")
    lent, output = prefill_then_decode(prefill, decode, "r1")
    assert output.outputs[0].token_ids == expected
    assert lent.outputs[0].token_ids == expected[:1]  # the prefill's own first token agrees
    num_prompt = len(lent.prompt_token_ids)
    num_fetched = lent.kv_transfer_params["num_blocks"]  # every lent block is used
    assert num_fetched == (num_prompt - 1) // 16
    assert output.num_cached_tokens == 16 * num_fetched  # the fetched blocks were prefix hits
    lender = prefill.engine.scheduler.connector.stats
    fetcher = decode.engine.scheduler.connector.stats
    assert (lender.num_leases, lender.num_leases_acked) == (1, 1)
    assert (fetcher.num_fetches, fetcher.num_fetches_ok, fetcher.num_fetches_failed) == (1, 1, 0)
    assert fetcher.fetched_bytes > 0
    assert_no_leak(prefill)
    assert_no_leak(decode)


@pytest.mark.parametrize("transport", ["shm"])
def test_shared_memory_transport(tiny_model, single, transport):
    expected = run(single, f"alone-{transport}", GREEDY).outputs[0].token_ids
    prefill = engine(tiny_model, kv_role="prefill", kv_transfer_transport=transport)
    decode = engine(tiny_model, kv_role="decode")
    lent, output = prefill_then_decode(prefill, decode, "r-shm")
    assert lent.kv_transfer_params["transport"] == transport
    assert output.outputs[0].token_ids == expected
    assert decode.engine.scheduler.connector.stats.num_fetches_ok == 1
    assert_no_leak(prefill)
    assert_no_leak(decode)


@pytest.mark.parametrize("fault", ["corrupt", "refuse"])
def test_a_bad_transfer_is_recomputed_not_served(tiny_model, single, fault, monkeypatch):
    expected = run(single, f"alone-{fault}", GREEDY).outputs[0].token_ids
    monkeypatch.setenv(FAULT_ENV, fault)  # read by the lending worker at start
    prefill = engine(tiny_model, kv_role="prefill")
    monkeypatch.delenv(FAULT_ENV)
    decode = engine(tiny_model, kv_role="decode")
    _, output = prefill_then_decode(prefill, decode, f"r-{fault}")
    assert output.outputs[0].token_ids == expected
    assert output.num_cached_tokens == 0  # computed by the decode engine itself
    fetcher = decode.engine.scheduler.connector.stats
    assert (fetcher.num_fetches_ok, fetcher.num_fetches_failed) == (0, 1)
    assert prefill.engine.scheduler.connector.stats.num_leases_failed == 1
    assert_no_leak(prefill)
    assert_no_leak(decode)


def test_an_unreachable_or_foreign_lease_is_recomputed(tiny_model, single, monkeypatch):
    # The lender is never stepped: an ask it does answer waits for the lease to open, 0.5 s here
    # (not the default 5 s) before it is refused.
    monkeypatch.setattr(worker_half, "LEASE_OPEN_WAIT_S", 0.5)
    expected = run(single, "alone-gone", GREEDY).outputs[0].token_ids
    prefill, decode = engine(tiny_model, kv_role="prefill"), engine(tiny_model, kv_role="decode")
    lent = run(prefill, "gone", FIRST, kv_transfer_params={"do_remote_decode": True})
    params = lent.kv_transfer_params
    prefill.engine.executor.connector.close()  # the prefill engine's server is gone
    unreachable = run(decode, "gone", GREEDY, kv_transfer_params=params)
    foreign = run(decode, "foreign", GREEDY, kv_transfer_params=params | {"kv_identity": "x"})
    assert unreachable.outputs[0].token_ids == foreign.outputs[0].token_ids == expected
    fetcher = decode.engine.scheduler.connector.stats
    assert (fetcher.num_fetches_failed, fetcher.num_fetches_skipped) == (1, 1)
    drain(decode)
    assert_no_leak(decode)


def test_unfetched_leases_expire_and_aborts_leak_nothing(tiny_model, monkeypatch):
    # The prefill engine is not stepped while the decode engine fetches: its worker waits for
    # the lease to open, 0.5 s here (not the default 5 s), so each fetch is still in flight
    # when the decode request is aborted.
    monkeypatch.setattr(worker_half, "LEASE_OPEN_WAIT_S", 0.5)
    prefill = engine(tiny_model, kv_role="prefill", kv_lease_timeout_s=0.3)
    decode = engine(tiny_model, kv_role="decode")
    lent = run(prefill, "never", FIRST, kv_transfer_params={"do_remote_decode": True})
    assert prefill.engine.kv_manager.pool.usage > 0  # lent blocks stay held...
    drain(prefill)  # ...until the lease expires
    assert prefill.engine.scheduler.connector.stats.num_leases_expired == 1
    assert_no_leak(prefill)
    # A decode request aborted while its fetch is parked: the fetch is cancelled, its blocks
    # come back once the worker reports it, whatever stage it was in.
    for index in range(3):
        lent = run(prefill, f"a{index}", FIRST, kv_transfer_params={"do_remote_decode": True})
        decode.engine.add_request(
            f"a{index}", PROMPT, GREEDY, kv_transfer_params=lent.kv_transfer_params
        )
        for _ in range(index):
            decode.engine.step()
        decode.engine.abort_request(f"a{index}")
        drain(decode)
        drain(prefill)
        assert_no_leak(decode)
        assert_no_leak(prefill)


def test_bad_kv_transfer_params_are_refused(tiny_model, single):
    with pytest.raises(ValueError, match="do_remote_decode needs an engine with --kv-role"):
        single.engine.add_request("x", PROMPT, FIRST, kv_transfer_params={"do_remote_decode": True})
    prefill = engine(tiny_model, kv_role="prefill")
    bad = {"do_remote_prefill": True, "transfer_id": "t", "endpoint": "http://x"}
    for params, message in (
        ({"hello": 1}, "needs 'do_remote_decode' or 'do_remote_prefill'"),
        ([1], "must be an object"),
        (bad, "kv_identity must be a str"),
    ):
        with pytest.raises(ValueError, match=message):
            prefill.engine.add_request("y", PROMPT, FIRST, kv_transfer_params=params)
    with pytest.raises(ValueError, match="needs n 1"):
        prefill.engine.add_request(
            "z",
            PROMPT,
            SamplingParams(n=2, max_tokens=1),
            kv_transfer_params={"do_remote_decode": True},
        )


def test_an_engine_waiting_only_on_a_lease_logs_itself_idle(tiny_model, tmp_path):
    # The step log's "busy" flag says the gap after a step is loop overhead (the simulator's
    # profile fit charges it to the step); open leases are no work to schedule.
    from corral.engine.step_log import read_step_log

    path = tmp_path / "steps.jsonl"
    prefill = engine(tiny_model, kv_role="prefill", step_log_path=str(path))
    run(prefill, "r", FIRST, kv_transfer_params={"do_remote_decode": True})
    time.sleep(0.05)
    prefill.engine.step()  # the lease opens; nothing to schedule
    run(prefill, "r2", FIRST)  # the next request, after an idle gap
    prefill.engine.core.flush()
    _, steps, _ = read_step_log(path)
    assert prefill.engine.scheduler.connector.has_pending()  # the lease is still open
    assert steps[-1]["busy"] is False and steps[-1]["gap"] >= 0.05
