"""corral's reference serving numbers: the Azure LLM conversation trace (2023), replayed against
`corral serve` on a random model shaped like SmolLM-135M, at several request rates.

The trace's first --num-requests requests keep their order and relative arrival times; the gaps
are rescaled so the mean rate is each target rate (`corral bench sweep --request-rates`), and
prompt and output lengths are multiplied by --length-scale (at least 1 token; prompt + output
<= --max-model-len). Every request is sent as token ids with max_tokens = its output length and
ignore_eos, streamed, and timed by `corral bench` (corral.bench). Writes the sweep figure, a JSON
with every record, and prints the table docs/benchmarks.md quotes.

    .venv/bin/python -m benchmarks.serve_reference --rates 1,2,4,8 --num-requests 32 \
        --repeats 3 --length-scale 0.1 --plot docs/figures/serve_sweep.png \
        --json /tmp/serve_reference.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from corral.bench.payload import RequestOptions
from corral.bench.plots import plot_sweep
from corral.bench.reference import azure_conv_options, smollm_shaped_model
from corral.bench.serve import ServeTarget
from corral.bench.sweep import (
    SweepPoint,
    format_sweep,
    http_point_runner,
    pool_repeats,
    run_sweep,
)
from corral.core.slo_target import parse_slo
from corral.workloads import ArrivalOptions, build_workload

REPO = Path(__file__).resolve().parents[1]


class ServerProcess:
    """`corral serve` in a subprocess on a free loopback port; a context manager."""

    def __init__(self, server_args: list[str], log_path: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "corral.cli", "--log-level", "WARNING", "serve"]
        command += ["--port", str(self.port), "--no-access-log", *server_args]
        self.command = command
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in __exit__
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, env=env
        )

    def __enter__(self) -> ServerProcess:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"corral serve exited with {self.process.returncode}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError("corral serve did not become healthy in 600 s")

    def __exit__(self, *exc_info: object) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self._log.close()


def conditions() -> dict:
    import torch

    import corral

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "corral_version": corral.__version__,
        "git_commit": commit,
        "cpu_count": os.cpu_count(),
        "load_average_1_5_15": os.getloadavg(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def markdown_table(points: list[SweepPoint], repeats: list[list[SweepPoint]]) -> str:
    """Pooled numbers per rate; goodput also as its range over the repeats."""
    lines = [
        "| rate (req/s) | completed | req/s | output tok/s | goodput (req/s) | goodput range "
        "| TTFT p50 / p99 (ms) | TPOT p50 / p99 (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for index, point in enumerate(points):
        s = point.report.summary
        each = [one[index].report.summary.goodput or 0.0 for one in repeats]
        lines.append(
            f"| {point.value:g} | {s.num_completed}/{s.num_completed + s.num_failed} "
            f"| {s.request_throughput:.3f} | {s.output_throughput:.1f} | {s.goodput:.3f} "
            f"| {min(each):.2f} to {max(each):.2f} "
            f"| {s.ttft.median_ms:.0f} / {s.ttft.p99_ms:.0f} "
            f"| {s.tpot.median_ms:.0f} / {s.tpot.p99_ms:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="1,2,4,8", help="request rates (req/s)")
    parser.add_argument("--num-requests", type=int, default=32)
    parser.add_argument("--length-scale", type=float, default=0.1)
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--slo", default="ttft_ms=1000,tpot_ms=200")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument(
        "--server-threads",
        type=int,
        default=1,
        help="torch threads of the engine (on a shared 2-core machine 2 threads oversubscribe)",
    )
    parser.add_argument("--warmup-requests", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="sweeps, pooled per rate")
    parser.add_argument("--server-arg", action="append", default=[], help="extra serve flag")
    parser.add_argument("--plot", type=Path, default=REPO / "docs/figures/serve_sweep.png")
    parser.add_argument("--json", type=Path, default=None, help="every record of every rate")
    parser.add_argument("--log", type=Path, default=Path("/tmp/corral_serve_reference.log"))
    args = parser.parse_args()
    rates = [float(rate) for rate in args.rates.split(",")]
    model_dir = smollm_shaped_model()
    server_args = ["--model", str(model_dir), "--dtype", args.dtype]
    server_args += ["--num-threads", str(args.server_threads)]
    server_args += ["--max-model-len", str(args.max_model_len), *args.server_arg]
    workload_options = azure_conv_options(
        args.num_requests, args.length_scale, args.max_model_len, arrival=ArrivalOptions("trace")
    )
    workload = build_workload(workload_options)
    lengths = [(s.num_prompt_tokens, s.num_output_tokens) for s in workload]
    print(
        f"workload: Azure conv, first {len(lengths)} requests, lengths x{args.length_scale}: "
        f"prompt mean {sum(p for p, _ in lengths) / len(lengths):.0f}, output mean "
        f"{sum(o for _, o in lengths) / len(lengths):.0f} tokens; SLO {args.slo}"
    )
    before = conditions()
    print(f"conditions: {json.dumps(before)}")
    slo = parse_slo(args.slo)
    with ServerProcess(server_args, args.log) as server:
        target = ServeTarget(
            server.url, num_warmup_requests=args.warmup_requests, show_progress=False
        )
        options = RequestOptions(model=model_dir.name)

        def on_point(point: SweepPoint) -> None:
            print(point.report.format(f"rate {point.value:g} req/s"), flush=True)

        repeats = [
            run_sweep(
                workload_options,
                target,
                http_point_runner(options, slo),
                request_rates=rates,
                on_point=on_point,
            )
            for _ in range(args.repeats)
        ]
    points = pool_repeats(repeats, slo)
    for index, one in enumerate(repeats):
        print(f"repeat {index + 1}:\n{format_sweep(one)}")
    print(f"pooled over {args.repeats} repeats:\n{format_sweep(points)}")
    print(markdown_table(points, repeats))
    after = conditions()["load_average_1_5_15"]
    print(f"load average after: {after}")
    title = (
        f"corral serve, SmolLM-135M-shaped (random, {args.dtype}), Azure conv x{args.length_scale}"
        f", {len(lengths)} requests x {args.repeats} runs per rate"
    )
    print(f"wrote {plot_sweep(points, args.plot, title)}")
    if args.json:
        document = {
            "command": sys.argv,
            "server_command": server.command,
            "conditions_before": before,
            "load_average_after": after,
            "workload": workload.description,
            "slo": args.slo,
            "pooled": [point.to_dict(with_records=False) for point in points],
            "repeats": [[point.to_dict() for point in one] for one in repeats],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=1, default=str))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
