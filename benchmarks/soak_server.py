"""The soak's side of the server: start `corral serve` on loopback (or use one given by URL),
learn its model and context length, measure the shared prefixes, read the processes' RSS, and
wait for the KV pool to come back clean (GET /debug/kv, which needs --debug-check-integrity)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.soak_mix import PREFIX_FRACTIONS, Prefix, ServerInfo, prefix_texts

REPO = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 600.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class StartedServer:
    """`python -m corral.cli serve --debug-check-integrity ...` with its log in a file."""

    def __init__(
        self, log_path: Path, model: str | None, extra_args: list[str], api_key: str | None
    ) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        args = [sys.executable, "-m", "corral.cli", "serve", "--port", str(self.port)]
        args += ["--debug-check-integrity", *(["--model", model] if model else []), *extra_args]
        self.command = args
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false", CORRAL_API_KEY=api_key or "")
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        self.process = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=REPO
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"corral serve exited ({self.process.returncode}): {self.tail()}"
                )
            try:
                if httpx.get(self.base_url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"corral serve did not become healthy: {self.tail()}")

    def tail(self, num_chars: int = 4000) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-num_chars:]

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM (drain, then exit); the exit status, None if it had to be killed."""
        status: int | None = None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                status = self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        else:
            status = self.process.returncode
        self._log.close()
        return status


def engine_pid(server_pid: int) -> int | None:
    """The engine core: the server's spawned child (not multiprocessing's resource tracker)."""
    children = Path(f"/proc/{server_pid}/task/{server_pid}/children")
    try:
        pids = [int(pid) for pid in children.read_text().split()]
    except OSError:
        return None
    for pid in pids:
        try:
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            continue
    return None


def rss_kib(pid: int) -> int | None:
    """VmRSS of a process in KiB, from /proc/<pid>/status (None if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def process_rss(server_pid: int | None) -> dict[str, int]:
    """{"server": KiB, "engine": KiB} for the processes that can be found."""
    if server_pid is None:
        return {}
    found = {"server": server_pid, "engine": engine_pid(server_pid)}
    sizes = {name: rss_kib(pid) for name, pid in found.items() if pid is not None}
    return {name: size for name, size in sizes.items() if size is not None}


class ServerApi:
    """The few non-inference routes the soak uses, over httpx."""

    def __init__(self, base_url: str, api_key: str | None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.client = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=60, trust_env=False
        )

    def close(self) -> None:
        self.client.close()

    def _json(self, method: str, path: str, body: dict | None = None) -> Any:
        response = self.client.request(method, path, json=body)
        response.raise_for_status()
        return response.json()

    def info(self, seed: int) -> ServerInfo:
        """The served model, its context length and the shared prefixes, each measured once."""
        model = self._json("GET", "/v1/models")["data"][0]
        max_model_len = int(model["max_model_len"])
        prefixes = []
        texts = prefix_texts(seed, len(PREFIX_FRACTIONS))
        for text, fraction in zip(texts, PREFIX_FRACTIONS):
            body = {"prompt": text, "add_special_tokens": False}
            tokens = self._json("POST", "/tokenize", body)["tokens"]
            cut = self._json(
                "POST", "/detokenize", {"tokens": tokens[: int(fraction * max_model_len)]}
            )
            ids = self._json("POST", "/tokenize", {"prompt": cut["prompt"]})["tokens"]
            prefixes.append(Prefix(cut["prompt"], ids))
        return ServerInfo(model["id"], max_model_len, prefixes)

    def kv_state(self) -> tuple[int, dict[str, Any]]:
        response = self.client.get("/debug/kv")
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, {"body": response.text[:500]}

    def wait_kv_clean(self, timeout_s: float = 120.0) -> tuple[bool, str]:
        """Poll /debug/kv until no request is left and every block is free (cached blocks count
        as free); (clean, what was seen last)."""
        deadline = time.monotonic() + timeout_s
        while True:
            status, state = self.kv_state()
            if status != 200:
                hint = " (start the server with --debug-check-integrity)" if status == 404 else ""
                return False, f"GET /debug/kv answered {status}: {state}{hint}"
            clean = state["num_requests"] == 0 and state["num_free_blocks"] == state["num_blocks"]
            if clean or time.monotonic() > deadline:
                return clean, f"integrity holds; {state}"
            time.sleep(0.2)

    def metrics(self, prefixes: tuple[str, ...]) -> dict[str, float]:
        """Prometheus samples whose names start with one of prefixes."""
        response = self.client.get("/metrics")
        values = {}
        for line in response.text.splitlines():
            if line.startswith(prefixes):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values
