"""The servers of the peer comparison, each in its own process group on a free loopback port:
corral serve, llama.cpp's llama-server and vLLM's CPU build (default settings, and a tuned
thread/KV configuration). Every one serves the model under one name, MODEL_NAME."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks.peers.model import LLAMA_SERVER, MODEL_NAME, REPO, VLLM_BIN


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    name: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    startup_timeout_s: float = 900.0
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    started_s: float = 0.0
    ready_after_s: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, log_dir: Path) -> None:
        self.log_path = log_dir / f"{self.name}.log"
        log = open(self.log_path, "wb")  # noqa: SIM115 - the child keeps it
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false", **self.env)
        self.started_s = time.monotonic()
        self.process = subprocess.Popen(
            self.command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
            start_new_session=True,
        )
        log.close()

    def poll_ready(self) -> bool:
        """True once /health answers 200; RuntimeError if the process died."""
        assert self.process is not None
        if self.ready_after_s is not None:
            return True
        if self.process.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:] if self.log_path else ""
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{tail}")
        try:
            if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                self.ready_after_s = time.monotonic() - self.started_s
                return True
        except httpx.HTTPError:
            pass
        if time.monotonic() - self.started_s > self.startup_timeout_s:
            raise RuntimeError(f"{self.name} not healthy after {self.startup_timeout_s:.0f} s")
        return False

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


def corral_server(
    model: Path,
    ctx: int,
    threads: int,
    max_seqs: int,
    name: str = "corral",
    extra: tuple[str, ...] = (),
) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "corral", "--log-level", "WARNING", "serve"]
    command += ["--model", str(model), "--dtype", "bfloat16", "--port", str(port)]
    command += ["--served-model-name", MODEL_NAME, "--max-model-len", str(ctx)]
    command += ["--num-threads", str(threads), "--max-num-seqs", str(max_seqs), "--no-access-log"]
    return Server(name, [*command, *extra], port=port)


def llama_server(
    gguf: Path, ctx: int, threads: int, slots: int, name: str = "llama.cpp", repack: bool = True
) -> Server:
    """-c is the whole context, split evenly over the -np slots; --cache-ram 0 turns off the
    host prompt cache (a long-running server with many slots slowed down over rounds with it);
    continuous batching is llama-server's default. repack=False passes --no-repack (no
    repacked or AMX weight buffers: see run.py's --llama-repack)."""
    port = free_port()
    command = [str(LLAMA_SERVER), "-m", str(gguf), "--port", str(port), "--host", "127.0.0.1"]
    command += ["-c", str(ctx * slots), "-np", str(slots), "-t", str(threads)]
    command += ["--cache-ram", "0", "--alias", MODEL_NAME, "--no-webui"]
    if not repack:
        command.append("--no-repack")
    return Server(name, command, port=port)


def vllm_server(model: Path, name: str, env: dict[str, str], extra: list[str]) -> Server:
    port = free_port()
    command = [str(VLLM_BIN / "vllm"), "serve", str(model), "--dtype", "bfloat16"]
    command += ["--port", str(port), "--host", "127.0.0.1", "--served-model-name", MODEL_NAME]
    command += extra
    base_env = {
        "PATH": f"{VLLM_BIN}:{os.environ.get('PATH', '')}",
        "VIRTUAL_ENV": str(VLLM_BIN.parent),
        "VLLM_TARGET_DEVICE": "cpu",
        "VLLM_CACHE_ROOT": str(VLLM_BIN.parent.parent / "vllm-cache"),
    }
    return Server(name, command, env={**base_env, **env}, port=port)


def start_all(servers: list[Server], log_dir: Path) -> None:
    """Start every server at once and wait for all to answer /health."""
    log_dir.mkdir(parents=True, exist_ok=True)
    for server in servers:
        server.start(log_dir)
        print(f"started {server.name} on :{server.port}: {' '.join(server.command)}", flush=True)
    pending = list(servers)
    while pending:
        pending = [server for server in pending if not server.poll_ready()]
        time.sleep(1.0)
    for server in servers:
        print(f"{server.name} healthy after {server.ready_after_s:.0f} s", flush=True)


def stop_all(servers: list[Server]) -> None:
    for server in servers:
        server.stop()
