"""The step log's per-request timeline (corral.engine.step_log): a preempted request's
preemptions and resumptions are logged by request id, request_timeline() gathers them with its
first-token record, and the step-log reader (the profile fit's) still reads the log."""

from __future__ import annotations

import json

from corral.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
from corral.engine.step_log import read_step_log, request_timeline
from corral.sim.profile_log import profile_from_step_logs


def test_a_preempted_requests_preemption_and_resume_are_logged(tiny_model, tmp_path):
    from corral.engine.llm_engine import LLMEngine
    from corral.sampling_params import SamplingParams

    log = tmp_path / "steps.jsonl"
    config = EngineConfig(
        model=ModelConfig(model=str(tiny_model), dtype="float32", max_model_len=128),
        cache=CacheConfig(num_blocks=8),
        scheduler=SchedulerConfig(max_num_seqs=4),
        step_log_path=str(log),
    )
    engine = LLMEngine(config)
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    for index in range(4):  # 4 requests x 5 blocks > 8 blocks: some are preempted
        ids = [1 + (7 * index + 3 * i) % 90 for i in range(30)]
        engine.add_request(f"r{index}", {"prompt_token_ids": ids}, params)
    while engine.has_unfinished_requests():
        engine.step()
    num_preemptions = engine.core.scheduler.num_preemptions
    engine.core.flush()
    assert num_preemptions > 0
    records = [json.loads(line) for line in log.read_text().splitlines()]
    preempts = [r for r in records if "preempt" in r]
    resumes = [r for r in records if "resume" in r]
    assert len(preempts) == num_preemptions == len(resumes)  # all finished: all resumed
    assert all(r["mode"] == "recompute" and r["held"] > 0 for r in preempts)
    victim = preempts[0]["preempt"]
    timeline = request_timeline(log, victim)
    own, rest = timeline[0], timeline[1:]
    assert own["id"] == victim and "first" in own and own["arrival"] <= own["add"]
    # Each preemption is followed by its resumption, in time order.
    kinds = ["preempt" if "preempt" in r else "resume" for r in rest]
    assert kinds == ["preempt", "resume"] * (len(rest) // 2) and kinds
    assert all(a["t"] <= b["t"] for a, b in zip(rest, rest[1:], strict=False))
    # The reader the profile fit uses skips the new records.
    _, steps, requests = read_step_log(log)
    assert sorted(r["id"] for r in requests) == [f"r{i}" for i in range(4)]
    assert all("b" in step for step in steps)
    assert profile_from_step_logs([log]).metadata["source"]["num_requests"] == 4
