"""The engine's step log (corral.engine.step_log) and profiles fitted to it
(corral.sim.profile_log, `corral simulate profile --from-step-log`)."""

from __future__ import annotations

import json

import pytest

from corral.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
from corral.core.batch_shape import BatchShape
from corral.engine.step_log import STEP_LOG_KIND, read_step_log
from corral.sim.cost.profiled import ProfiledCostModel
from corral.sim.profile_log import profile_from_step_logs, step_samples
from tests.sim.test_cli_and_profile import main

ENGINE = {"model": "m", "dtype": "float32", "num_blocks": 64, "max_model_len": 256}
ARCH = {"vocab_size": 100}


def true_cost_s(shape: BatchShape) -> float:
    """A made-up machine: 2 ms per step, 40 us per token, 1 us per attention pair."""
    return 0.002 + 40e-6 * shape.num_tokens + 1e-6 * shape.prefill_attention_pairs


def write_log(path, steps: list[tuple[BatchShape, float, bool]], engine=ENGINE, start=100.0):
    """A step log of back-to-back steps: (shape, duration, busy before) each; busy steps follow
    their predecessor after a 0.5 ms loop overhead, the others after a 1 s idle gap."""
    lines = [{"kind": STEP_LOG_KIND, "version": 1, "engine": engine, "arch": ARCH}]
    t, last_end = start, None
    for shape, duration_s, busy in steps:
        if last_end is not None:
            t = last_end + (0.0005 if busy else 1.0)
        gap = None if last_end is None else t - last_end
        lines.append({"t": t, "s": duration_s, "gap": gap, "busy": busy, "b": list(shape)})
        lines.append({"arrival": t - 0.001, "add": t, "first": t + duration_s, "prompt": 8})
        last_end = t + duration_s
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")


def synthetic_steps() -> list[tuple[BatchShape, float, bool]]:
    steps = []
    for index, prompt_len in enumerate((16, 48, 96, 200, 32, 128)):
        prefill = BatchShape.of_chunks([(prompt_len, 0, True)])
        steps.append((prefill, true_cost_s(prefill) - 0.0005, False))
        for batch in (1, 2, 4, 8)[: 1 + index % 4]:
            decode = BatchShape.of_chunks([(1, prompt_len + i, True) for i in range(batch)])
            steps.append((decode, true_cost_s(decode) - 0.0005, True))
    return steps


def test_step_samples_charge_each_step_the_loop_overhead_that_follows_it():
    a, b, c = BatchShape(num_decode_requests=1), BatchShape(num_decode_requests=2), BatchShape()
    steps = [
        {"t": 0.0, "s": 0.010, "gap": None, "busy": False, "b": list(a)},
        {"t": 0.011, "s": 0.020, "gap": 0.001, "busy": True, "b": list(b)},
        {"t": 0.034, "s": 0.030, "gap": 0.003, "busy": True, "b": list(c)},
        {"t": 5.0, "s": 0.040, "gap": 4.936, "busy": False, "b": list(a)},  # after idling
    ]
    samples = step_samples(steps)
    assert [shape for shape, _ in samples] == [a, b, c, a]
    # The first two are followed by busy gaps; the others by idle time: the median overhead.
    assert [round(t, 6) for _, t in samples] == [0.011, 0.023, 0.032, 0.042]


def test_a_profile_fitted_to_a_log_recovers_the_machine(tmp_path):
    log = tmp_path / "steps.jsonl"
    write_log(log, synthetic_steps())
    model = profile_from_step_logs([log])
    assert model.metadata["engine"] == ENGINE and model.metadata["arch"] == ARCH
    assert model.metadata["source"]["num_requests"] == len(synthetic_steps())
    for shape in (
        BatchShape.of_chunks([(64, 0, True)]),
        BatchShape.of_chunks([(1, 100, True)] * 3),
        BatchShape.of_chunks([(150, 0, True)]),
    ):
        assert model.step_time_s(shape) == pytest.approx(true_cost_s(shape), rel=0.02)
    path = tmp_path / "profile.json"
    model.save(path)
    assert ProfiledCostModel.load(path).metadata["source"]["step_logs"] == [str(log)]


def test_time_window_and_mismatched_or_foreign_logs(tmp_path):
    log = tmp_path / "steps.jsonl"
    steps = synthetic_steps()
    write_log(log, steps)
    _, logged, _ = read_step_log(log)
    middle = logged[len(logged) // 2]["t"]
    later = profile_from_step_logs([log], windows=[(middle, float("inf"))])
    assert 0 < later.metadata["fit"]["num_samples"] < len(steps)
    with pytest.raises(ValueError, match="no steps"):
        profile_from_step_logs([log], windows=[(logged[-1]["t"] + 1, float("inf"))])
    first, last = logged[:8], logged[-8:]
    windows = [(first[0]["t"], first[-1]["t"]), (last[0]["t"], last[-1]["t"])]
    two = profile_from_step_logs([log], windows=windows, fit_target="typical")
    assert two.metadata["fit"]["num_samples"] == 16 and two.metadata["fit"]["target"] == "typical"
    assert two.metadata["source"]["windows"] == [list(window) for window in windows]
    other = tmp_path / "other.jsonl"
    write_log(other, steps, engine=ENGINE | {"num_blocks": 32})
    with pytest.raises(ValueError, match="other engine settings"):
        profile_from_step_logs([log, other])
    with log.open("a") as appended:  # a second run appended with other settings
        appended.write(other.read_text().splitlines()[0] + "\n")
    with pytest.raises(ValueError, match="other engine settings"):
        read_step_log(log)
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text('{"t": 1, "s": 0.1, "gap": null, "busy": false, "b": [0,0,0,0,1,1,1,1]}\n')
    with pytest.raises(ValueError, match="no corral step log header"):
        read_step_log(foreign)
    foreign.write_text("not json\n")
    with pytest.raises(ValueError, match="not JSON"):
        read_step_log(foreign)


def test_cli_fits_a_profile_from_step_logs(tmp_path, capsys, caplog):
    log = tmp_path / "steps.jsonl"
    write_log(log, synthetic_steps())
    out = tmp_path / "profile.json"
    assert main(["simulate", "profile", "--from-step-log", str(log), "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert ProfiledCostModel.load(out).metadata["engine"] == ENGINE
    missing = tmp_path / "missing.jsonl"
    assert main(["simulate", "profile", "--from-step-log", str(missing), "--out", str(out)]) == 2
    assert "missing.jsonl" in caplog.text


@pytest.mark.slow  # runs the real engine
def test_the_engine_logs_every_step_and_request(tiny_model, tmp_path):
    from corral.engine.llm_engine import LLMEngine
    from corral.sampling_params import SamplingParams

    log = tmp_path / "steps.jsonl"
    config = EngineConfig(
        model=ModelConfig(model=str(tiny_model), dtype="float32", max_model_len=256),
        cache=CacheConfig(num_blocks=64),
        scheduler=SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=64),
        step_log_path=str(log),
    )
    engine = LLMEngine(config)
    prompt_lens, max_tokens = [10, 90, 30], 12
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    for index, prompt_len in enumerate(prompt_lens):
        ids = [1 + (7 * index + 3 * i) % 90 for i in range(prompt_len)]
        engine.add_request(f"r{index}", {"prompt_token_ids": ids}, params)
    engine.add_request("aborted", {"prompt_token_ids": [5] * 12}, params)
    engine.abort_request(["aborted"])
    while engine.has_unfinished_requests():
        engine.step()
    engine.core.flush()
    header, steps, requests = read_step_log(log)
    assert header["engine"]["num_blocks"] == 64 and header["engine"]["max_num_seqs"] == 4
    assert header["arch"]["vocab_size"] == engine.arch.vocab_size
    shapes = [BatchShape(*step["b"]) for step in steps]
    # Every prompt token is prefilled once; every output token after the first is a decode.
    assert sum(s.num_prefill_tokens for s in shapes) == sum(prompt_lens)
    assert sum(s.num_decode_requests for s in shapes) == len(prompt_lens) * (max_tokens - 1)
    assert max(s.num_tokens for s in shapes) <= 64  # the chunked 90-token prompt
    assert all(step["s"] > 0 for step in steps) and steps[0]["gap"] is None
    assert all(step["busy"] for step in steps[1:])  # never idle in between
    assert len(requests) == len(prompt_lens)  # the aborted one never had a first token
    assert sorted(r["prompt"] for r in requests) == sorted(prompt_lens)
    assert all(r["arrival"] <= r["add"] < r["first"] for r in requests)
    model = profile_from_step_logs([log])
    assert model.metadata["fit"]["num_samples"] == len(steps)
