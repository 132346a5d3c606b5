"""The length predictor runs off the event loop (issue 13, defect 10b): a slow prediction lets
other coroutines and other HTTP requests make progress, and predicts what it did before."""

from __future__ import annotations

import asyncio
import threading

from fastapi.testclient import TestClient

from corral import SamplingParams
from corral.engine.async_llm import AsyncLLM
from corral.llm import engine_config_from_kwargs
from corral.serve.app import build_app
from corral.serve.config import ServerConfig

PARAMS = SamplingParams(temperature=0, max_tokens=2, ignore_eos=True)
# Generous: only reached when the loop is blocked (then the test fails on the event order).
RELEASE_TIMEOUT_S = 10.0


class GatedPredictor:
    """predict_one waits until released (or the timeout), then records that it finished."""

    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.started = threading.Event()
        self.release = threading.Event()
        self.threads: list[str] = []

    def predict_one(self, text: str) -> int:
        self.threads.append(threading.current_thread().name)
        self.started.set()
        self.release.wait(RELEASE_TIMEOUT_S)
        self.events.append("predicted")
        return len(text) + 7


def _engine(tiny_model, events: list[str]) -> tuple[AsyncLLM, GatedPredictor, list]:
    config = engine_config_from_kwargs(
        model=str(tiny_model), dtype="float32", num_blocks=64, max_model_len=256
    )
    engine = AsyncLLM(config, multiprocess=False)
    predictor = GatedPredictor(events)
    engine.input_processor.length_predictor = predictor
    admitted: list = []
    add_requests = engine.client.add_requests

    def recording(requests):
        admitted.extend(requests)
        add_requests(requests)

    engine.client.add_requests = recording  # type: ignore[method-assign]
    return engine, predictor, admitted


def test_async_llm_predicts_in_a_worker_thread(tiny_model):
    events: list[str] = []
    engine, predictor, admitted = _engine(tiny_model, events)

    async def ticker() -> None:
        while not predictor.started.is_set():
            await asyncio.sleep(0.001)
        for _ in range(5):
            events.append("tick")
            await asyncio.sleep(0)
        predictor.release.set()

    async def request() -> list:
        return [o async for o in engine.generate("The quick brown fox", PARAMS, "a")]

    async def main() -> list:
        await engine.start()
        try:
            outputs, _ = await asyncio.gather(request(), ticker())
            return outputs
        finally:
            await engine.shutdown()

    outputs = asyncio.run(asyncio.wait_for(main(), 120))
    assert events == ["tick"] * 5 + ["predicted"]
    assert predictor.threads and threading.main_thread().name not in predictor.threads
    assert outputs[-1].finished and len(outputs[-1].outputs[0].token_ids) == 2
    expected = engine.input_processor.make_requests("b", outputs[-1].prompt_token_ids, PARAMS)
    assert [r.predicted_num_output_tokens for r in admitted] == [
        expected[0].predicted_num_output_tokens
    ]


def test_server_answers_other_requests_while_a_prediction_runs(tiny_model):
    events: list[str] = []
    engine, predictor, admitted = _engine(tiny_model, events)
    with TestClient(build_app(engine, ServerConfig())) as client:
        responses = []
        body = {"prompt": "The quick brown fox", "max_tokens": 2, "temperature": 0}
        slow = threading.Thread(
            target=lambda: responses.append(client.post("/v1/completions", json=body))
        )
        slow.start()
        assert predictor.started.wait(60)
        assert client.get("/health").status_code == 200
        events.append("health")
        predictor.release.set()
        slow.join(60)
    assert events == ["health", "predicted"]
    assert responses and responses[0].status_code == 200, responses
    assert (
        len(admitted) == 1
        and admitted[0].predicted_num_output_tokens
        == len(engine.tokenizer.decode(admitted[0].prompt_token_ids)) + 7
    )
