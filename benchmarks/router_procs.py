"""Processes of the router benchmark (benchmarks/router.py): `corral serve` replicas pinned to
one core each, `corral router` in front of them, their /metrics counters, and the machine."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx

_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _child_setup(cores: list[int] | None, parent_pid: int):  # noqa: ANN202
    def setup() -> None:  # in the child, between fork and exec
        if cores is not None:
            os.sched_setaffinity(0, cores)
        if sys.platform.startswith("linux"):
            import ctypes

            ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != parent_pid:  # this script died before prctl
                os.kill(os.getpid(), signal.SIGKILL)

    return setup


class Child:
    """A `corral <command>` child process on a free loopback port, in its own session (so its
    engine core can be stopped with it), output to log_path; cores: its CPU affinity (None:
    inherited)."""

    def __init__(self, argv: list[str], log_path: Path, cores: list[int] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cores = cores
        self.log_path = log_path
        command = [sys.executable, "-m", "corral.cli", "--log-level", "WARNING", *argv]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--no-access-log"]
        self.command = command
        self._terminated = False
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false", OMP_WAIT_POLICY="PASSIVE")
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=_child_setup(cores, os.getpid()),
            )

    def wait_healthy(self, timeout_s: float = 300.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                code = self.process.returncode
                raise RuntimeError(f"{self.command[5]} exited ({code}):\n{tail}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=2.0).status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{self.url} not healthy in {timeout_s:.0f} s (log: {self.log_path})")

    def terminate(self) -> None:
        """SIGTERM (it drains), once: a second one would cut its drain short."""
        if self.process.poll() is None and not self._terminated:
            self._terminated = True
            self.process.send_signal(signal.SIGTERM)

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM (it drains), then SIGKILL to its session's group past grace_s."""
        self.terminate()
        if self.process.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(grace_s)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)  # an engine core that outlived it
        self.process.wait()


def stop_all(children: list[Child]) -> None:
    """Child.stop for each of children, their drains overlapping: SIGTERM to all first."""
    for child in children:
        child.terminate()
    for child in children:
        child.stop()


def start_replica(engine_flags: list[str], core: int, step_log: Path, log_path: Path) -> Child:
    """`corral serve` on one core with one torch thread, logging its steps to step_log."""
    argv = ["serve", *engine_flags, "--num-threads", "1", "--step-log", str(step_log)]
    return Child(argv, log_path, cores=[core])


def start_router(
    backends: list[str], policy: str, tokenizer: str, num_blocks: int, log_path: Path
) -> Child:
    """`corral router` over backends (unpinned, like the router of `corral serve --replicas`)."""
    argv = ["router", "--policy", policy, "--tokenizer", tokenizer]
    argv += ["--router-block-size", "16", "--router-num-blocks", str(num_blocks)]
    for url in backends:
        argv += ["--backend", url]
    return Child(argv, log_path)


_SAMPLE = re.compile(r"^([A-Za-z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$")


# Series name -> key: the prefix cache and queue series scrape() reads by default.
REPLICA_SERIES = {
    "vllm:prefix_cache_hits_total": "hits",
    "vllm:prefix_cache_queries_total": "queries",
    "vllm:num_requests_running": "running",
    "vllm:num_requests_waiting": "waiting",
}


def scrape(url: str, wanted: dict[str, str] = REPLICA_SERIES) -> dict[str, float]:
    """One replica's series under their keys (labels summed; 0 for a missing one): by default
    prefix cache hits and queries (tokens), requests running and waiting."""
    values = dict.fromkeys(wanted.values(), 0.0)
    for line in httpx.get(url + "/metrics", timeout=10.0).text.splitlines():
        match = _SAMPLE.match(line)
        if match and match.group(1) in wanted:
            values[wanted[match.group(1)]] += float(match.group(3))
    return values


def routed_counts(router_url: str, num_replicas: int) -> list[int]:
    """Completions the router sent to each replica (corral:router_requests_total)."""
    counts = [0] * num_replicas
    text = httpx.get(router_url + "/metrics", timeout=10.0).text
    for line in text.splitlines():
        if line.startswith("corral:router_requests_total{") and "completions" in line:
            index = re.search(r'replica="(\d+)"', line)
            if index:
                counts[int(index.group(1))] += int(float(line.rsplit(" ", 1)[1]))
    return counts


def wait_idle(urls: list[str], timeout_s: float = 120.0) -> None:
    """Until no replica has a request running or waiting."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(scrape(u)["running"] + scrape(u)["waiting"] == 0 for u in urls):
            return
        time.sleep(0.2)


def machine() -> dict[str, Any]:
    """benchmarks.common.machine() plus the affinity, all three load averages, commit, date."""
    from benchmarks.common import machine as common_machine

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return common_machine(
        affinity=sorted(os.sched_getaffinity(0)),
        load_average_1_5_15=[round(x, 2) for x in os.getloadavg()],
        git_commit=commit,
        date=time.strftime("%Y-%m-%d %H:%M %Z"),
    )


class CpuMeter:
    """CPU the machine spent during a run, and how much of it was not this benchmark's: all
    busy time (/proc/stat, steal included) less the time of this process and its descendants
    (replicas, their engine cores, the router, the client). foreign_cores is that remainder
    over the wall time: other jobs competing for the two cores."""

    def __init__(self) -> None:
        self._start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        import psutil

        t = psutil.cpu_times()
        busy = t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0)
        me = psutil.Process()
        ours = 0.0
        for process in [me, *me.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                ours += times.user + times.system
        return time.monotonic(), busy, ours

    def stop(self) -> dict[str, float]:
        (t0, busy0, ours0), (t1, busy1, ours1) = self._start, self._sample()
        wall = max(t1 - t0, 1e-9)
        busy, ours = (busy1 - busy0) / wall, (ours1 - ours0) / wall
        return {
            "busy_cores": round(busy, 3),
            "ours_cores": round(ours, 3),
            "foreign_cores": round(max(0.0, busy - ours), 3),
        }


def wait_router_ready(router: Child, num_replicas: int, timeout_s: float = 120.0) -> None:
    """Until the router has every replica in its rotation."""
    router.wait_healthy(timeout_s)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = httpx.get(router.url + "/metrics", timeout=10).text
        healthy = [
            line for line in text.splitlines()
            if line.startswith("corral:router_replica_healthy{") and line.endswith(" 1.0")
        ]  # fmt: skip
        if len(healthy) >= num_replicas:
            return
        time.sleep(0.2)
    raise RuntimeError("the router did not take in every replica")


def model_info(model_dir: str) -> tuple[int, int]:
    """The model's vocabulary size and positions (config.json)."""
    import json

    config = json.loads((Path(model_dir) / "config.json").read_text())
    return int(config["vocab_size"]), int(config.get("max_position_embeddings", 2048))


def resolve_model(args: Any) -> tuple[str, int]:
    """args.model (default: the bundled demo) as an absolute directory and its vocabulary size;
    args.max_model_len defaults to min(512, the model's positions)."""
    if args.model is None:
        from corral.demo import BUNDLED_MODELS_DIR, DEFAULT_MODEL_NAME

        args.model = str(BUNDLED_MODELS_DIR / DEFAULT_MODEL_NAME)
    model_dir = str(Path(args.model).resolve())
    vocab, max_positions = model_info(model_dir)
    if args.max_model_len is None:
        args.max_model_len = min(512, max_positions)
    return model_dir, vocab


T = TypeVar("T")


def run_stopping_on_sigterm(run: Callable[[], T]) -> T:
    """run(), with SIGTERM raising SystemExit so that replicas and routers (ExitStacks) are
    stopped too; as is off the main thread (no signal handlers there)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return run()
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return run()
    finally:
        signal.signal(signal.SIGTERM, previous)
