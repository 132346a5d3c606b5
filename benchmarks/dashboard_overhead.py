"""What an open /dashboard page costs a busy server: the same workload with no page open and
with a dashboard listener on /dashboard/events, as output tokens/s and tokens per server
CPU-second (both processes), at concurrency 32.

One `corral serve` runs the whole benchmark with --dashboard-interval-ms (default 100: five
times the default refresh, so the figure bounds what a page costs). Each repeat runs the load
without a listener, then with one (fresh random prompts each run: no prefix-cache hits between
runs), so the ratio is taken back to back on the same machine; the listener is a thread reading
the event stream, as a browser would, and counts the frames it got. Workload and model as
benchmarks/server_overhead.py (Azure conversation lengths scaled by --length-scale; random
SmolLM-135M shape with --num-layers layers).

    .venv/bin/python benchmarks/dashboard_overhead.py --repeats 3 \\
        --json docs/figures/dashboard_overhead.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import machine  # noqa: E402
from benchmarks.server_overhead import (  # noqa: E402
    Server,
    add_load_arguments,
    load_inputs,
    prompts_for,
    run_server_load,
)


class Listener:
    """A thread that reads /dashboard/events like a page, counting frames, until stopped."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.num_frames = 0
        self.num_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Listener:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        import httpx

        with httpx.stream("GET", self.url + "/dashboard/events", timeout=None) as response:
            for line in response.iter_lines():
                if line.startswith("data:"):
                    self.num_frames += 1
                    self.num_bytes += len(line)
                if self._stop.is_set():
                    return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_load_arguments(parser, port=18766, num_layers=8)
    parser.add_argument("--dashboard-interval-ms", type=int, default=100)
    args = parser.parse_args()
    model_dir, vocab_size, lengths = load_inputs(args)
    server = Server(model_dir, args, ("--dashboard-interval-ms", str(args.dashboard_interval_ms)))
    server.wait_ready()
    rows = []
    try:
        warm = prompts_for(lengths[:4], vocab_size, seed=1000)
        asyncio.run(run_server_load(server, warm, lengths[:4], 4, stream=False))
        for repeat in range(args.repeats):
            prompts = prompts_for(lengths, vocab_size, seed=repeat)
            plain = asyncio.run(
                run_server_load(server, prompts, lengths, args.concurrency, stream=True)
            )
            prompts = prompts_for(lengths, vocab_size, seed=100 + repeat)
            with Listener(server.url) as listener:
                watched = asyncio.run(
                    run_server_load(server, prompts, lengths, args.concurrency, stream=True)
                )
            row = {
                "no_page": plain,
                "page_open": watched,
                "num_frames": listener.num_frames,
                "frame_bytes_mean": listener.num_bytes / max(1, listener.num_frames),
                "ratio": watched["tokens_per_s"] / plain["tokens_per_s"],
                "cpu_ratio": watched["tokens_per_cpu_s"] / plain["tokens_per_cpu_s"],
            }
            rows.append(row)
            print(
                f"repeat {repeat}: tok/s no page {plain['tokens_per_s']:.1f}, page open "
                f"{watched['tokens_per_s']:.1f} (x{row['ratio']:.3f}, {listener.num_frames} "
                f"frames of {row['frame_bytes_mean'] / 1024:.1f} KiB); tokens per server CPU-s "
                f"x{row['cpu_ratio']:.3f}",
                flush=True,
            )
    finally:
        server.stop()
    summary = {
        "ratio_median": statistics.median(r["ratio"] for r in rows),
        "cpu_ratio_median": statistics.median(r["cpu_ratio"] for r in rows),
    }
    print(
        f"page open / no page, output tokens/s: median x{summary['ratio_median']:.3f}; tokens "
        f"per server CPU-s: median x{summary['cpu_ratio_median']:.3f} "
        f"(--dashboard-interval-ms {args.dashboard_interval_ms})"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        result = {
            "machine": machine(num_threads=args.num_threads),
            "args": {k: str(v) for k, v in vars(args).items()},
            "model": model_dir.name,
            "rows": rows,
            "summary": summary,
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
