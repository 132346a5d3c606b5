"""End to end: `corral bench serve` and `corral bench sweep` against a live `corral serve` on a
tiny model (a subprocess on a free loopback port)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from corral.cli import main

pytest.importorskip("corral.serve.app", reason="the server (corral.serve) is not in this checkout")

STARTUP_TIMEOUT_S = 180.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def live_server(tiny_model, tmp_path_factory):
    port = _free_port()
    log_path = tmp_path_factory.mktemp("bench-server") / "server.log"
    args = [sys.executable, "-m", "corral.cli", "serve", "--model", str(tiny_model)]
    args += ["--port", str(port), "--dtype", "float32", "--num-kv-blocks", "64"]
    args += ["--max-model-len", "512", "--num-threads", "1", "--no-access-log"]
    env = dict(os.environ, CORRAL_API_KEY="", TOKENIZERS_PARALLELISM="false")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"corral serve exited:\n{log_path.read_text()[-4000:]}")
            try:
                if httpx.get(base_url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"corral serve never became healthy:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.2)
        yield base_url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@pytest.fixture(scope="module")
def vocab_size(tiny_model) -> str:
    return str(json.loads((tiny_model / "config.json").read_text())["vocab_size"])


@pytest.mark.slow
def test_bench_serve_against_corral_serve(live_server, vocab_size, tiny_model, tmp_path, capsys):
    out, plots = tmp_path / "run.json", tmp_path / "plots"
    args = ["bench", "serve", "--base-url", live_server, "--no-progress", "--dataset", "random"]
    args += ["--num-requests", "8", "--input-len", "16", "--output-len", "6"]
    args += ["--range-ratio", "0.5", "--vocab-size", vocab_size, "--request-rate", "20"]
    args += ["--slo", "ttft_ms=60000", "--result-json", str(out), "--plot", str(plots)]
    assert main(args) == 0
    document = json.loads(out.read_text())
    records = document["records"]
    assert document["summary"]["num_completed"] == 8, document["summary"]["errors"]
    assert document["summary"]["num_slo_met"] == 8
    assert document["output_token_sources"] == {"usage": 8}
    assert document["num_wrong_output_length"] == 0
    for record in records:
        # ignore_eos + max_tokens: exactly the workload's length; usage's prompt count.
        assert record["num_output_tokens"] == record["num_expected_output_tokens"]
        assert 8 <= record["num_prompt_tokens"] <= 24
        assert 0 < record["ttft_s"] <= record["e2e_s"]
        assert record["send_time_s"] >= record["scheduled_time_s"]
    assert document["model"] == tiny_model.name
    assert {p.name for p in plots.iterdir()} == {"latency_cdf.png", "timeline.png"}
    assert "Requests completed / failed:            8 / 0" in capsys.readouterr().out


@pytest.mark.slow
def test_multi_turn_chat_and_a_sweep_against_corral_serve(live_server, tmp_path):
    out = tmp_path / "chat.json"
    args = ["bench", "serve", "--base-url", live_server, "--no-progress", "--endpoint", "chat"]
    args += ["--dataset", "multi-turn", "--num-requests", "6", "--num-turns", "3"]
    args += ["--input-len", "6", "--output-len", "4", "--think-time-s", "0.05"]
    args += ["--result-json", str(out)]
    assert main(args) == 0
    records = json.loads(out.read_text())["records"]
    assert all(r["error"] is None for r in records)
    by_conversation: dict[str, list[dict]] = {}
    for record in records:
        by_conversation.setdefault(record["conversation_id"], []).append(record)
    for turns in by_conversation.values():
        turns.sort(key=lambda r: r["turn_index"])
        for earlier, later in zip(turns, turns[1:]):
            # Each turn's prompt holds the previous prompt and reply: it only grows.
            assert later["num_prompt_tokens"] > earlier["num_prompt_tokens"]
            assert later["send_time_s"] >= earlier["token_times_s"][-1] + 0.05
    sweep_out, sweep_png = tmp_path / "sweep.json", tmp_path / "sweep.png"
    args = ["bench", "sweep", "--base-url", live_server, "--no-progress", "--dataset", "random"]
    args += ["--num-requests", "4", "--input-len", "8", "--output-len", "3", "--vocab-size"]
    args += ["64", "--concurrencies", "1,4", "--result-json", str(sweep_out)]
    args += ["--plot", str(sweep_png)]
    assert main(args) == 0
    points = json.loads(sweep_out.read_text())["points"]
    assert [p["max_in_flight"] for p in points][0] == 1
    assert all(p["summary"]["num_completed"] == 4 for p in points)
    assert sweep_png.stat().st_size > 0
