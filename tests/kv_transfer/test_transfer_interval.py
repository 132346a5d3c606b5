"""Request tracing's kv_transfer interval: a decode engine's request that waits for its KV from
the prefill engine records the wait (source "remote"), and its last update carries it."""

from __future__ import annotations

import time

from corral.core.request_times import KV_TRANSFER
from tests.kv_transfer.test_disaggregation_engines import (
    FIRST,
    GREEDY,
    PROMPT,
    STEP_TIMEOUT_S,
    drain,
    engine,
    run,
)


def test_a_wait_for_remote_kv_is_an_interval(tiny_model):
    prefill, decode = engine(tiny_model, kv_role="prefill"), engine(tiny_model, kv_role="decode")
    lent = run(prefill, "r1", FIRST, kv_transfer_params={"do_remote_decode": True})
    prefill.engine.step()  # the lease opens in the next step
    decode.engine.add_request("r1", PROMPT, GREEDY, kv_transfer_params=lent.kv_transfer_params)
    request = decode.engine.scheduler.requests["r1"]
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while not request.is_finished:
        decode.engine.step()
        assert time.monotonic() < deadline, "the request did not finish"
        time.sleep(0.001)
    drain(prefill)
    drain(decode)
    assert request.num_preemptions == 0
    assert request.intervals is not None and len(request.intervals) == 1
    wait = request.intervals[0]
    assert (wait.kind, wait.detail) == (KV_TRANSFER, "remote")
    assert wait.end_s is not None and wait.start_s <= wait.end_s <= request.first_scheduled_time
