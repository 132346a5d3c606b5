"""`corral serve --replicas 2`: two pinned replicas and the router on one port; SIGTERM to the
launcher stops every process it started."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.cluster.test_router_unit import sample
from tests.serve.conftest import STARTUP_TIMEOUT_S, free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and POSIX signals"),
]


@pytest.fixture(scope="module", autouse=True)
def cpu_kernels_built() -> None:
    from corral.model.kernels import cpu_kernels

    cpu_kernels()


def descendants(pid: int) -> list[int]:
    """Every process below pid (children, their children, ...)."""
    found, stack = [], [pid]
    while stack:
        parent = stack.pop()
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found.append(child)
            stack.append(child)
    return found


def is_running(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


class Launcher:
    """`corral serve --replicas 2` on the tiny model, its log in a file."""

    def __init__(self, model: Path, log_path: Path) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        args = [sys.executable, "-m", "corral.cli", "serve", "--replicas", "2", "--policy"]
        args += ["round-robin", "--model", str(model), "--dtype", "float32"]
        args += ["--port", str(self.port), "--max-model-len", "512", "--no-access-log"]
        env = dict(os.environ, CORRAL_API_KEY="", TOKENIZERS_PARALLELISM="false")
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.started: list[int] = []

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            assert self.process.poll() is None, self.log()
            assert time.monotonic() < deadline, self.log()
            try:
                if httpx.get(self.base_url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.started = descendants(self.process.pid)
        # Both replicas and their engine cores.
        assert len(self.started) >= 4, self.started

    def wait_all_gone(self, timeout_s: float) -> list[int]:
        """The processes it started still running after timeout_s (none, when all is well)."""
        deadline = time.monotonic() + timeout_s
        while any(is_running(pid) for pid in self.started) and time.monotonic() < deadline:
            time.sleep(0.2)
        return [pid for pid in self.started if is_running(pid)]

    def kill_everything(self) -> None:
        for pid in [self.process.pid, *self.started]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(10)


@pytest.fixture
def launcher(tiny_model, tmp_path):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("two replicas need two cores")
    launcher = Launcher(tiny_model, tmp_path / "launcher.log")
    try:
        launcher.wait_ready()
        yield launcher
    finally:
        launcher.kill_everything()  # a no-op when the test stopped it


def test_replicas_serve_behind_one_port_and_stop_with_the_launcher(launcher):
    pid = launcher.process.pid
    children = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    assert len(children) == 2
    # Pinned to disjoint cores (two cores here: one each).
    shares = [os.sched_getaffinity(child) for child in children]
    assert shares[0].isdisjoint(shares[1]) and all(shares)
    body = {"prompt": "The quick brown fox", "max_tokens": 8, "temperature": 0}
    url = launcher.base_url + "/v1/completions"
    texts = {httpx.post(url, json=body, timeout=120).json()["choices"][0]["text"] for _ in "ab"}
    assert len(texts) == 1  # the same greedy answer from both replicas
    metrics = httpx.get(launcher.base_url + "/metrics").text
    for replica in ("0", "1"):
        assert sample(metrics, "corral:router_requests_total", replica=replica) == 1.0
        assert sample(metrics, "corral:router_replica_healthy", replica=replica) == 1.0

    launcher.process.send_signal(signal.SIGTERM)
    assert launcher.process.wait(120) == 0, launcher.log()
    assert launcher.wait_all_gone(10) == [], launcher.log()


def test_killed_launcher_leaves_no_orphans(launcher):
    launcher.process.kill()  # no chance to clean up: the kernel tells the replicas
    launcher.process.wait(10)
    assert launcher.wait_all_gone(60) == [], launcher.log()


def test_a_replica_that_dies_is_restarted_and_rejoins(launcher):
    pid = launcher.process.pid
    children = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    victim = children[0]
    os.killpg(victim, signal.SIGKILL)  # the server and its engine core, as an OOM kill would
    body = {"prompt": "The quick brown fox", "max_tokens": 4, "temperature": 0}
    url = launcher.base_url + "/v1/completions"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:  # served throughout by the other replica, then by both again
        assert httpx.post(url, json=body, timeout=120).status_code == 200
        metrics = httpx.get(launcher.base_url + "/metrics").text
        healthy = [sample(metrics, "corral:router_replica_healthy", replica=r) for r in "01"]
        children = [  # every thread's: the supervisor's thread starts the new one
            int(child)
            for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()
        ]
        if healthy == [1.0, 1.0] and victim not in children and len(children) == 2:
            break
        assert time.monotonic() < deadline, (healthy, victim, children, launcher.log())
        time.sleep(0.5)
    assert "restarting it in" in launcher.log_path.read_text(errors="replace")
