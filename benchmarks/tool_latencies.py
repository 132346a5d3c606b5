"""Measure the latencies of real tool calls on this machine, for agent workloads to replay
(`--think-time-dist measured:docs/figures/tool_latencies.txt` on `corral bench serve` and
`corral simulate run`).

    .venv/bin/python -m benchmarks.tool_latencies [--calls 40]

Four local tools an agent commonly calls, each run for real:
- python: run a short generated program in a fresh interpreter (a code tool);
- search: a regular-expression search over this repository's sources (a retrieval tool);
- http: a GET of a JSON document from a local HTTP server on another thread (an API tool,
  without the network: add your own network round trip to these);
- sql: an aggregate query over a 200,000-row SQLite table (a database tool).
Writes docs/figures/tool_latencies.json (per tool: samples and percentiles) and
docs/figures/tool_latencies.txt (every call's seconds, one per line, the tools interleaved as an
agent that picks one at random would see them).
"""

from __future__ import annotations

import argparse
import http.server
import json
import random
import re
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import REPO, machine


def python_tool(rng: random.Random) -> None:
    program = f"print(sum(i * i for i in range({rng.randrange(10_000, 200_000)})))"
    subprocess.run([sys.executable, "-c", program], check=True, capture_output=True)


def search_tool(rng: random.Random) -> None:
    words = ("request", "block", "window", "scheduler", "token", "expert", "latency")
    pattern = re.compile(rf"\b{rng.choice(words)}\w*", re.IGNORECASE)
    hits = 0
    for path in (REPO / "corral").rglob("*.py"):
        hits += len(pattern.findall(path.read_text()))
    assert hits > 0


class _JSONHandler(http.server.BaseHTTPRequestHandler):
    body = json.dumps({"results": [{"id": i, "title": f"item {i}"} for i in range(200)]}).encode()

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


def http_tool_factory() -> tuple[Callable[[random.Random], None], Callable[[], None]]:
    import urllib.request

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _JSONHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/search"

    def call(rng: random.Random) -> None:
        with urllib.request.urlopen(f"{url}?q={rng.randrange(1000)}", timeout=10) as response:
            assert len(json.loads(response.read())["results"]) == 200

    return call, server.shutdown


def sql_tool_factory() -> Callable[[random.Random], None]:
    connection = sqlite3.connect(":memory:", check_same_thread=False)
    connection.execute("CREATE TABLE orders (id INTEGER, customer INTEGER, amount REAL)")
    rows = ((i, i % 5000, (i * 37) % 1000 / 10) for i in range(200_000))
    connection.executemany("INSERT INTO orders VALUES (?, ?, ?)", rows)

    def call(rng: random.Random) -> None:
        low = rng.randrange(0, 4000)
        connection.execute(
            "SELECT customer, SUM(amount) FROM orders WHERE customer BETWEEN ? AND ? "
            "GROUP BY customer ORDER BY 2 DESC LIMIT 10",
            (low, low + 500),
        ).fetchall()

    return call


def measure(num_calls: int, seed: int) -> tuple[dict[str, list[float]], list[float]]:
    """Per tool, its calls' seconds; and every call's seconds in the order they ran."""
    rng = random.Random(seed)
    http_call, stop_http = http_tool_factory()
    tools = {
        "python": python_tool,
        "search": search_tool,
        "http": http_call,
        "sql": sql_tool_factory(),
    }
    samples: dict[str, list[float]] = {name: [] for name in tools}
    interleaved: list[float] = []
    order = [name for name in tools for _ in range(num_calls)]
    rng.shuffle(order)  # interleaved, as an agent picking tools at random would call them
    try:
        for name in order:
            start = time.perf_counter()
            tools[name](rng)
            elapsed = time.perf_counter() - start
            samples[name].append(elapsed)
            interleaved.append(elapsed)
    finally:
        stop_http()
    return samples, interleaved


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def percentile(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return dict(
        num_calls=len(values),
        mean_s=round(statistics.fmean(values), 6),
        p50_s=round(percentile(0.5), 6),
        p90_s=round(percentile(0.9), 6),
        p99_s=round(percentile(0.99), 6),
        max_s=round(ordered[-1], 6),
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=40, help="calls per tool")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default=str(REPO / "docs" / "figures"))
    args = parser.parse_args(argv)
    samples, interleaved = measure(args.calls, args.seed)
    result = dict(
        machine=machine(),
        tools={name: summary(values) for name, values in samples.items()},
        all_tools=summary(interleaved),
        samples_s={name: [round(v, 6) for v in values] for name, values in samples.items()},
    )
    out_dir = Path(args.out_dir)
    (out_dir / "tool_latencies.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# seconds per tool call, measured by benchmarks/tool_latencies.py"]
    lines += [f"{value:.6f}" for value in interleaved]
    (out_dir / "tool_latencies.txt").write_text("\n".join(lines) + "\n")
    print(json.dumps({"tools": result["tools"], "all_tools": result["all_tools"]}, indent=1))
    return result


if __name__ == "__main__":
    main()
