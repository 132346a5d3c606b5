"""Cold start of `corral serve` on this machine: the time from starting the process
(`corral serve --model M --port P`) to its first 200 on /health (ready_s: the replica could take
requests; the simulator's default --cold-start-s), and to the first token of a 1-token streaming
request sent as soon as it is ready (first_token_s, from the same process start). Median of
--repeats fresh processes; each is stopped (SIGTERM) before the next starts. The time includes
the interpreter, imports, model load and engine start-up: everything a new replica pays.

    .venv/bin/python benchmarks/cold_start.py            # the demo model (corral-demo)
    .venv/bin/python benchmarks/cold_start.py --smollm   # the random SmolLM-135M-shaped model

Writes (merges its run into) docs/figures/cold_start.json, with the machine description.
"""

from __future__ import annotations

import argparse
import datetime
import json
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import machine  # noqa: E402

FIGURES = REPO / "docs" / "figures" / "cold_start.json"
POLL_S = 0.02  # /health polling period: the resolution of ready_s


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def one_cold_start(model: str, extra: list[str], timeout_s: float) -> dict[str, float]:
    """Start a server, time /health and the first token, stop it."""
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "corral.cli", "--log-level", "WARNING", "serve"]
    command += ["--model", model, "--port", str(port), "--no-access-log", *extra]
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO)
    try:
        ready_s = None
        with httpx.Client(timeout=5) as client:
            while ready_s is None:
                if process.poll() is not None:
                    raise RuntimeError(f"corral serve exited with {process.returncode}")
                if time.perf_counter() - start > timeout_s:
                    raise RuntimeError(f"corral serve not ready after {timeout_s} s")
                try:
                    if client.get(url + "/health").status_code == 200:
                        ready_s = time.perf_counter() - start
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(POLL_S)
            body = {"prompt": "Hello", "max_tokens": 1, "temperature": 0, "stream": True}
            first_token_s = None
            with client.stream("POST", url + "/v1/completions", json=body, timeout=120) as reply:
                if reply.status_code != 200:
                    raise RuntimeError(f"completion answered {reply.status_code}")
                for line in reply.iter_lines():
                    if first_token_s is None and line.startswith("data: {"):
                        first_token_s = time.perf_counter() - start
            if first_token_s is None:
                raise RuntimeError("the stream ended without a token")
        return {"ready_s": ready_s, "first_token_s": first_token_s}
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def stats(values: list[float]) -> dict[str, Any]:
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
        "samples": [round(v, 3) for v in values],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="corral-demo", help="a bundled model's name or a dir")
    parser.add_argument(
        "--smollm", action="store_true", help="the random SmolLM-135M-shaped model (built once)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout-s", type=float, default=600.0)
    parser.add_argument("--out", type=Path, default=FIGURES)
    parser.add_argument(
        "serve_args", nargs="*", help="more `corral serve` flags, after --, e.g. -- --dtype float32"
    )
    args = parser.parse_args()
    model, name = args.model, args.model
    if args.smollm:
        from benchmarks.common import smollm_shaped_model

        model_dir = smollm_shaped_model()  # built before timing: not part of a cold start
        model, name = str(model_dir), model_dir.name
    elif Path(model).is_dir():
        name = Path(model).resolve().name
    runs = []
    for repeat in range(args.repeats):
        run = one_cold_start(model, args.serve_args, args.timeout_s)
        print(
            f"{name} run {repeat + 1}/{args.repeats}: ready {run['ready_s']:.2f} s, "
            f"first token {run['first_token_s']:.2f} s",
            flush=True,
        )
        runs.append(run)
    result = {
        "ready_s": stats([r["ready_s"] for r in runs]),
        "first_token_s": stats([r["first_token_s"] for r in runs]),
        "serve_args": args.serve_args,
        "machine": machine(),
        "date": datetime.date.today().isoformat(),
        "command": " ".join(["benchmarks/cold_start.py", *sys.argv[1:]]),
    }
    document: dict[str, Any] = {}
    if args.out.is_file():
        document = json.loads(args.out.read_text())
    document["description"] = (
        "Cold start of `corral serve`: seconds from process start to the first 200 on /health "
        "(ready_s; the simulator's default --cold-start-s is corral-demo's median) and to the "
        "first token of a 1-token streaming request sent when ready (first_token_s)."
    )
    document.setdefault("runs", {})[name] = result
    args.out.write_text(json.dumps(document, indent=1) + "\n")
    print(
        f"{name}: ready median {result['ready_s']['median']:.2f} s, first token median "
        f"{result['first_token_s']['median']:.2f} s -> {args.out}"
    )


if __name__ == "__main__":
    main()
