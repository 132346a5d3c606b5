"""AsyncLLM with the in-process core client: streaming, n > 1, aborts returning KV blocks, stop
strings finished in the core, queue bounds, a dead core, and the stats it reports."""

from __future__ import annotations

import asyncio

import pytest

from corral import LLM, SamplingParams
from corral.engine.async_llm import AsyncLLM, EngineOverloadedError
from corral.engine.core_client import EngineDeadError
from corral.llm import engine_config_from_kwargs
from corral.sampling_params import OutputKind

GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


def _config(tiny_model):
    return engine_config_from_kwargs(
        model=str(tiny_model),
        dtype="float32",
        num_blocks=64,
        max_model_len=256,
        debug_check_integrity=True,
    )


async def _engine(tiny_model, **kwargs) -> AsyncLLM:
    return await AsyncLLM.create(_config(tiny_model), multiprocess=False, **kwargs)


async def _assert_pool_clean(engine: AsyncLLM) -> None:
    for _ in range(200):
        state = await engine.client.call_utility("check_integrity")
        if state["num_requests"] == 0 and state["num_free_blocks"] == state["num_blocks"]:
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"KV pool not clean: {state}")


def test_streamed_deltas_match_the_offline_engine(tiny_model):
    expected = LLM.from_config(_config(tiny_model)).generate(
        "The quick brown fox", GREEDY, use_tqdm=False
    )[0]

    async def main():
        engine = await _engine(tiny_model)
        stats = []
        engine.stat_loggers.append(stats.append)
        params = GREEDY.clone(output_kind=OutputKind.DELTA)
        deltas = [o async for o in engine.generate("The quick brown fox", params, "a")]
        final = [
            o
            async for o in engine.generate(
                "The quick brown fox", GREEDY.clone(output_kind=OutputKind.FINAL_ONLY), "b"
            )
        ]
        await _assert_pool_clean(engine)
        await engine.shutdown()
        return deltas, final, stats

    deltas, final, stats = run(main())
    assert "".join(d.outputs[0].text for d in deltas) == expected.outputs[0].text
    assert sum(len(d.outputs[0].token_ids) for d in deltas) == 12
    assert deltas[-1].finished and deltas[-1].outputs[0].finish_reason == "length"
    assert len(final) == 1 and final[0].outputs[0].token_ids == expected.outputs[0].token_ids
    assert sum(s.num_generation_tokens for s in stats) == 24
    assert len([t for s in stats for t in s.time_to_first_tokens_s]) == 2
    finished = [f for s in stats for f in s.finished]
    assert [f.finish_reason for f in finished] == ["length", "length"]
    assert all(f.queue_time_s is not None and f.num_generation_tokens == 12 for f in finished)


def test_n_samples_and_abort_returns_the_blocks(tiny_model):
    async def main():
        engine = await _engine(tiny_model)
        params = SamplingParams(n=3, seed=1, max_tokens=8, output_kind=OutputKind.FINAL_ONLY)
        outputs = [o async for o in engine.generate("Natalia sold", params, "n")]
        long = SamplingParams(max_tokens=200, ignore_eos=True, output_kind=OutputKind.DELTA)
        stream = engine.generate("A train leaves", long, "long")
        first = await stream.__anext__()
        await stream.aclose()  # the consumer leaves: the request is aborted
        await _assert_pool_clean(engine)
        await engine.shutdown()
        return outputs, first

    outputs, first = run(main())
    assert len(outputs) == 1 and [c.index for c in outputs[0].outputs] == [0, 1, 2]
    assert first.outputs[0].token_ids and not first.finished


def test_stop_string_finishes_the_request_in_the_core(tiny_model):
    async def main():
        engine = await _engine(tiny_model)
        params = GREEDY.clone(max_tokens=30, output_kind=OutputKind.FINAL_ONLY)
        free = [o async for o in engine.generate("Serving large", params, "free")][0]
        stop = free.outputs[0].text[4:8]
        stopped = [
            o async for o in engine.generate("Serving large", params.clone(stop=[stop]), "s")
        ]
        await _assert_pool_clean(engine)
        await engine.shutdown()
        return free.outputs[0], stopped[0].outputs[0], stop

    free, stopped, stop = run(main())
    assert stopped.finish_reason == "stop" and stopped.stop_reason == stop
    assert stopped.text == free.text[: free.text.index(stop)]


def test_queue_bounds_refuse_at_once(tiny_model):
    async def main():
        engine = await _engine(tiny_model, max_queued_requests=2, max_queued_tokens=40)
        params = GREEDY.clone(output_kind=OutputKind.FINAL_ONLY)
        # add_request is synchronous: nothing is scheduled between these calls.
        streams = [engine.add_request(f"r{i}", [5, 6, 7], params) for i in range(2)]
        with pytest.raises(EngineOverloadedError, match="2 requests are waiting"):
            engine.add_request("r2", [5, 6, 7], params)
        with pytest.raises(ValueError, match="queue bound of 2 requests"):
            engine.add_request("big-n", [5, 6, 7], params.clone(n=3))
        with pytest.raises(ValueError, match="queue bound of 40 tokens"):
            engine.add_request("long", list(range(5, 50)), params)
        with pytest.raises(ValueError, match="already in use"):
            engine.add_request("r0", [5, 6, 7], params)

        results = []
        for stream in streams:
            results.append([o async for o in engine.iterate(stream)])
        later = [o async for o in engine.generate([5, 6, 7], params, "r3")]
        await engine.shutdown()
        return results, later

    results, later = run(main())
    assert all(r[-1].finished for r in results) and later[-1].finished


def test_request_ids_may_not_collide_with_the_ids_of_n_samples(tiny_model):
    async def main():
        engine = await _engine(tiny_model)
        params = SamplingParams(n=2, max_tokens=4, output_kind=OutputKind.FINAL_ONLY)
        pair = engine.add_request("x", [5, 6, 7], params)  # samples "0_x" and "1_x"
        with pytest.raises(ValueError, match="'0_x' is already in use"):
            engine.add_request("0_x", [5, 6, 7], params.clone(n=1))
        single = engine.add_request("1_y", [5, 6, 7], params.clone(n=1))
        with pytest.raises(ValueError, match="'1_y' is already in use"):
            engine.add_request("y", [5, 6, 7], params)
        outputs = [o async for o in engine.iterate(pair)] + [
            o async for o in engine.iterate(single)
        ]
        await _assert_pool_clean(engine)
        await engine.shutdown()
        return outputs

    outputs = run(main())
    assert [len(o.outputs) for o in outputs] == [2, 1]
    assert all(c.finish_reason is not None for o in outputs for c in o.outputs)


def test_a_dead_core_fails_requests_in_flight_and_new_ones(tiny_model):
    async def main():
        engine = await _engine(tiny_model)
        params = SamplingParams(max_tokens=200, ignore_eos=True, output_kind=OutputKind.DELTA)
        stream = engine.add_request("x", "The quick", params)
        engine.client.kill("injected fault")
        with pytest.raises(EngineDeadError, match="injected fault"):
            async for _ in engine.iterate(stream):
                pass
        assert not engine.is_healthy and "injected" in engine.dead_reason
        with pytest.raises(EngineDeadError):
            engine.add_request("y", "The quick", params)
        await engine.shutdown()

    run(main())
