"""The simulator's dashboard frames (corral/sim/dashboard_frames.py) and their replay
(corral/sim/dashboard_replay.py): the same snapshot as the server's, every step exactly once,
counters that end equal to the simulation's results."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from corral.sim.config import ClusterSpec
from corral.sim.dashboard_frames import write_frames
from corral.sim.dashboard_replay import Replay, build_replay_app, load_frames
from tests.sim.helpers import instance, run, spec, workload


def _simulate(interval_s: float = 0.05):
    # Two instances, a small pool each: requests wait and the pool fills.
    specs = [spec(f"r{i}", 0.01 * i, 200 + 10 * i, 40) for i in range(24)]
    cluster = ClusterSpec(
        instances=(
            instance(num_blocks=48, max_model_len=512, max_num_seqs=4),
            instance(num_blocks=48, max_model_len=512),
        ),
        router="round-robin",
        dashboard_interval_s=interval_s,
    )
    return run(cluster, workload(*specs)), specs


def test_frames_cover_every_step_once_and_end_at_the_results(tmp_path):
    result, specs = _simulate()
    total_output = 0
    for sim_instance in result.instances:
        frames = sim_instance.dashboard.frames
        assert frames and all(f["instance"] == sim_instance.index for f in frames)
        seqs = [step[0] for frame in frames for step in frame["steps"]]
        # Steps after the last frame are not in any frame: the frames hold a prefix, in order.
        assert seqs == list(range(1, len(seqs) + 1))
        assert len(seqs) <= sim_instance.num_steps
        for frame in frames:
            kv = frame["kv"]
            owned = sum(kv["num_owned"].values())
            assert (
                kv["num_free"] + kv["num_cached"] + kv["num_held"] + kv["num_shared"] + owned == 48
            )
            assert frame["requests"]["num_running"] == len(frame["requests"]["running"])
        seen_waiting = any(frame["requests"]["waiting"] for frame in frames)
        if sim_instance.index == 0:
            assert seen_waiting  # 4 seats for 12 requests
        counters = sim_instance.dashboard.counters
        routed = [s for s in specs if result.routes[s.request_id] == [sim_instance.index]]
        assert counters["corral:request_success"] == len(routed)
        assert counters["corral:prompt_tokens"] == sum(s.num_prompt_tokens for s in routed)
        total_output += counters["corral:generation_tokens"]
    assert total_output == sum(r.num_output_tokens for r in result.records)

    path = tmp_path / "frames.jsonl"
    count = write_frames(path, result.instances)
    lines = path.read_text().splitlines()
    assert count == len(lines) == sum(len(i.dashboard.frames) for i in result.instances)
    times = [json.loads(line)["now_s"] for line in lines]
    assert times == sorted(times)
    assert set(load_frames(path)) == {0, 1}


def test_no_frames_unless_asked():
    specs = [spec("r0", 0.0, 100, 10)]
    result = run(ClusterSpec(instances=(instance(),)), workload(*specs))
    assert result.instances[0].dashboard is None


def test_replay_skips_ahead_without_losing_steps(tmp_path, monkeypatch):
    result, _ = _simulate()
    frames = result.instances[0].dashboard.frames
    clock = [100.0]
    monkeypatch.setattr("corral.sim.dashboard_replay.time.monotonic", lambda: clock[0])
    replay = Replay(frames, speed=1.0, loop=False)
    first = replay.advance()
    assert first is not None and first["now_s"] == frames[0]["now_s"]
    assert replay.advance() is None  # nothing new is due yet
    clock[0] += 1e6  # far past the end: one frame with every remaining step
    last = replay.advance()
    assert last["now_s"] == frames[-1]["now_s"] and last["time_scale"] == 1.0
    seqs = [s[0] for s in first["steps"] + last["steps"]]
    assert seqs == [s[0] for frame in frames for s in frame["steps"]]


def test_replay_app_serves_the_page_and_refuses_unknown_instances(tmp_path):
    result, _ = _simulate()
    path = tmp_path / "frames.jsonl"
    write_frames(path, result.instances)
    client = TestClient(build_replay_app(load_frames(path), speed=10.0, loop=False))
    assert "dashboard.js" in client.get("/dashboard").text
    state = client.get("/dashboard/state", params={"instance": 1}).json()
    assert state["instance"] == 1 and state["instances"] == [0, 1]
    refused = client.get("/dashboard/state", params={"instance": 7})
    assert refused.status_code == 404 and "instances [0, 1]" in refused.json()["error"]["message"]
    with pytest.raises(ValueError, match="speed"):
        build_replay_app(load_frames(path), speed=0.0, loop=False)
    (tmp_path / "bad.jsonl").write_text('{"no": "instance"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        load_frames(tmp_path / "bad.jsonl")
