"""LLM.dashboard_frame(): the offline engine's view as `corral serve`'s /dashboard shows it."""

from __future__ import annotations

from corral import LLM, SamplingParams


def test_frame_follows_the_engine(tiny_model):
    llm = LLM(model=str(tiny_model), dtype="float32", num_blocks=32, block_size=16, max_num_seqs=2)
    engine = llm.engine
    params = SamplingParams(max_tokens=6, ignore_eos=True, temperature=0)
    for index in range(3):
        engine.add_request(f"r{index}", {"prompt_token_ids": [5 + index] * 20}, params)
    frame = llm.dashboard_frame()
    assert [row["id"] for row in frame["requests"]["waiting"]] == ["r0", "r1", "r2"]
    assert frame["steps"] == [] and frame["kv"]["num_free"] == 32
    engine.step()
    frame = llm.dashboard_frame()
    running = frame["requests"]["running"]
    assert [row["id"] for row in running] == ["r0", "r1"]
    assert {row["state"] for row in running} == {"decode"}  # whole prompts in one step
    assert [row["id"] for row in frame["requests"]["waiting"]] == ["r2"]
    (step,) = frame["steps"]
    assert step[0] == 1 and step[3] == 40 and step[4] == 2  # seq, ..., tokens, requests
    assert sum(frame["kv"]["num_owned"].values()) == 4  # 2 blocks per 20-token prompt
    while engine.has_unfinished_requests():
        engine.step()
    frame = llm.dashboard_frame(since_step=1)
    assert frame["requests"]["running"] == [] and frame["steps"][0][0] == 2
    assert frame["slo"].num_waiting == 0
    llm.shutdown()
