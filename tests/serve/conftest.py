"""A live `corral serve` in a subprocess on loopback, for the server tests."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

API_KEY = "test-key-0123456789"
# Generous: on a loaded 2-core machine a server (two processes, torch in both) takes a while.
STARTUP_TIMEOUT_S = 300.0


@pytest.fixture(scope="session", autouse=True)
def cpu_kernels_built() -> None:
    """Compile (or load) the CPU kernels once here, so that no server or engine start-up below
    spends minutes compiling them on a fresh machine."""
    from corral.model.kernels import cpu_kernels

    cpu_kernels()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Ray's worker processes take ports 10002-19999 by default.
MIN_PORT_ABOVE_RAY_WORKERS = 20000


def free_port_outside_ephemeral_range() -> int:
    """A free port below the kernel's ephemeral range (and above Ray's worker ports), for a
    server whose port is chosen before processes that bind port 0 start: Ray's own processes
    may otherwise be handed the same port between the choice and the server's bind."""
    try:
        low_text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]
        ephemeral_low = int(low_text)
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    high = max(ephemeral_low, MIN_PORT_ABOVE_RAY_WORKERS + 1000)
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(MIN_PORT_ABOVE_RAY_WORKERS, high)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return free_port()


class ServerProcess:
    """`python -m corral.cli serve ...` with its log in a file; the engine core is its child."""

    def __init__(self, model: Path, log_path: Path, *extra_args: str) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        args = [
            sys.executable,
            "-m",
            "corral.cli",
            "serve",
            "--model",
            str(model),
            "--port",
            str(self.port),
            "--dtype",
            "float32",
            "--max-model-len",
            "512",
            "--num-threads",
            "1",
            *extra_args,
        ]
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        env = dict(os.environ, CORRAL_API_KEY="", TOKENIZERS_PARALLELISM="false")
        self.process = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self._terminated = False

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"corral serve exited ({self.process.returncode}):\n{self.log()}")
            try:
                if httpx.get(self.base_url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        pytest.fail(f"corral serve did not become healthy:\n{self.log()}")

    def engine_pid(self) -> int:
        """The engine core process: the server's spawned child (not multiprocessing's resource
        tracker)."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        pids = [
            int(pid)
            for pid in children.read_text().split()
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        assert len(pids) == 1, f"expected one engine process, found {pids}"
        return pids[0]

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-6000:]

    def terminate(self) -> None:
        """SIGTERM (it drains), once: a second one would cut its drain short."""
        if self.process.poll() is None and not self._terminated:
            self._terminated = True
            self.process.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        self.terminate()
        if self.process.poll() is None:
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()


def stop_servers(servers) -> None:  # noqa: ANN001 - ServerProcesses
    """ServerProcess.stop for each, their drains overlapping: SIGTERM to all first."""
    for server in servers:
        server.terminate()
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def start_server(tiny_model, tmp_path_factory):
    """start_server(*args) -> a ready ServerProcess on the tiny model; stopped at module end."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the server tests use /proc and POSIX signals")
    servers: list[ServerProcess] = []

    def start(*args: str, wait: bool = True) -> ServerProcess:
        log = tmp_path_factory.mktemp("server") / "server.log"
        server = ServerProcess(tiny_model, log, *args)
        servers.append(server)
        if wait:
            server.wait_ready()
        return server

    yield start
    stop_servers(servers)


@pytest.fixture(scope="package")
def server(tiny_model, tmp_path_factory):
    """The shared server of the API, bad-input, overload and disconnect tests."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the server tests use /proc and POSIX signals")
    server = ServerProcess(
        tiny_model,
        tmp_path_factory.mktemp("server") / "server.log",
        "--api-key",
        API_KEY,
        "--num-kv-blocks",
        "96",
        "--max-num-seqs",
        "8",
        "--max-queued-requests",
        "6",
        "--served-model-name",
        "tiny",
        "--max-request-body-bytes",
        "200000",
        "--debug-check-integrity",
    )
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def in_process_client(model: Path, config: object = None, **engine_fields: object):
    """A TestClient over build_app with the engine core in this process (float32, 256-token
    context unless engine_fields say otherwise); use it as a context manager."""
    from fastapi.testclient import TestClient

    from corral.engine.async_llm import AsyncLLM
    from corral.llm import engine_config_from_kwargs
    from corral.serve.app import build_app
    from corral.serve.config import ServerConfig

    fields = {"dtype": "float32", "max_model_len": 256, **engine_fields}
    engine = AsyncLLM(engine_config_from_kwargs(model=str(model), **fields), multiprocess=False)
    return TestClient(build_app(engine, config if config is not None else ServerConfig()))


def auth(key: str = API_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="package")
def fuzz_server(tiny_model, tmp_path_factory):
    """The server the fuzz tests send their cases to (tests/serve/fuzz_support.py)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the server tests use /proc and POSIX signals")
    from tests.serve.fuzz_support import SERVER_ARGS

    log = tmp_path_factory.mktemp("fuzz-server") / "server.log"
    server = ServerProcess(tiny_model, log, "--api-key", API_KEY, *SERVER_ARGS)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="package")
def fuzz_tally():
    """What the fuzz tests sent and got, written out at the end when CORRAL_FUZZ_REPORT is set."""
    from tests.serve.fuzz_support import Tally

    tally = Tally()
    yield tally
    tally.write()
