"""`corral serve --replicas N --kv-events-config ...`: each replica publishes on ports of its
own and the router subscribes to each (one --kv-events-config for N engines used to bind one
port N times)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from corral.cluster.launcher import replica_kv_events
from tests.serve.conftest import STARTUP_TIMEOUT_S, free_port

EVENTS = json.dumps({"enable_kv_cache_events": True, "replay_endpoint": "tcp://*:5558"})


def test_each_replica_gets_its_own_ports_and_the_router_all_of_them():
    assignments = replica_kv_events(EVENTS, 3)
    assert len(assignments) == 3
    configs = [json.loads(config) for config, _ in assignments]
    ports = [c["endpoint"].rsplit(":", 1)[1] for c in configs]
    ports += [c["replay_endpoint"].rsplit(":", 1)[1] for c in configs]
    assert len(set(ports)) == 6  # all distinct
    for config, (_, router_side) in zip(configs, assignments):
        assert config["enable_kv_cache_events"] and config["endpoint"].startswith("tcp://*:")
        endpoint, replay = router_side.split(",")
        assert endpoint == config["endpoint"].replace("*", "127.0.0.1")
        assert replay == config["replay_endpoint"].replace("*", "127.0.0.1")
    assert replica_kv_events(None, 3) == []
    assert replica_kv_events(json.dumps({"enable_kv_cache_events": False}), 3) == []
    no_replay = replica_kv_events(json.dumps({"enable_kv_cache_events": True}), 2)
    assert all("," not in router_side for _, router_side in no_replay)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signals")
def test_launcher_with_kv_events_serves(tiny_model, tmp_path):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("two replicas need two cores")
    port = free_port()
    args = [sys.executable, "-m", "corral.cli", "serve", "--replicas", "2", "--policy"]
    args += ["prefix-aware", "--model", str(tiny_model), "--dtype", "float32", "--port", str(port)]
    args += ["--max-model-len", "512", "--kv-events-config", EVENTS]
    env = dict(os.environ, CORRAL_API_KEY="", TOKENIZERS_PARALLELISM="false")
    log_path = tmp_path / "launcher.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            assert process.poll() is None, log_path.read_text()[-4000:]
            assert time.monotonic() < deadline, log_path.read_text()[-4000:]
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        model = httpx.get(url + "/v1/models", timeout=30).json()["data"][0]["id"]
        body = {"model": model, "prompt": "hello " * 40, "max_tokens": 2}
        for _ in range(3):
            assert httpx.post(url + "/v1/completions", json=body, timeout=60).status_code == 200
        assert "Address already in use" not in log_path.read_text(errors="replace")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, log_path.read_text()[-4000:]
