"""The engine part of benchmarks/session_pins.py: `corral serve` (the bundled demo model, a small
KV pool) driven by `corral bench serve --dataset multi-turn --send-session-ids`, once without
session pins and once with --session-kv-ttl-s; the TTFT of follow-up turns from the records."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import machine
from benchmarks.server_overhead import Server
from benchmarks.session_pins import split_ttfts, summarize

REPO = Path(__file__).resolve().parents[1]
PORT = 18767


def _serve_args(args: argparse.Namespace, ttl_s: float) -> argparse.Namespace:
    """The options benchmarks/server_overhead.py's Server passes to corral serve."""
    return argparse.Namespace(
        port=PORT,
        dtype="bfloat16",
        concurrency=args.engine_max_num_seqs,
        max_num_batched_tokens=512,
        kv_cache_memory="1GiB",
        max_model_len=512,
        num_threads=1,
    )


def run_once(args: argparse.Namespace, ttl_s: float, workdir: Path, announce: bool = False) -> dict:
    extra = ("--num-kv-blocks", str(args.engine_num_kv_blocks), "--session-kv-ttl-s", str(ttl_s))
    server = Server(args.engine_model, _serve_args(args, ttl_s), extra)
    try:
        server.wait_ready()
        result_json = workdir / f"bench-{ttl_s:g}-{announce}.json"
        num_turns = args.engine_num_turns
        command = [
            sys.executable, "-m", "corral.cli", "bench", "serve",
            "--base-url", server.url, "--endpoint", "chat", "--dataset", "multi-turn",
            "--num-requests", str(args.engine_num_conversations * num_turns),
            "--num-turns", str(num_turns), "--think-time-s", str(args.engine_think_time_s),
            "--input-len", "48", "--output-len", "24", "--range-ratio", "0.5",
            "--request-rate", str(args.engine_conversation_rate), "--arrival", "poisson",
            "--send-session-ids", "--result-json", str(result_json), "--no-html",
            "--no-progress", *(["--send-session-pauses"] if announce else []),
        ]  # fmt: skip
        subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        records = [r for r in json.loads(result_json.read_text())["records"] if r["ttft_s"]]
        metrics = _metrics(server.url)
    finally:
        server.stop()
    first, follow = split_ttfts(records, num_turns)
    hits = metrics.get("corral:prefix_cache_hits_total", 0.0)
    queries = metrics.get("corral:prefix_cache_queries_total", 0.0)
    row = {"session_kv_ttl_s": ttl_s, "pause_oracle": announce, **summarize(first, follow)}
    row["prefix_hit_rate"] = hits / queries if queries else 0.0
    row["num_preemptions"] = metrics.get("corral:num_preemptions_total", 0.0)
    row["pins"] = {
        name: metrics.get(f"corral:session_{series}_total", 0.0)
        for name, series in (
            ("pinned", "pins"),
            ("hits", "pin_hits"),
            ("expired", "pins_expired"),
            ("reclaimed", "pins_reclaimed"),
        )
    }
    return row


def _metrics(url: str) -> dict[str, float]:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name.startswith("corral:"):
                values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values


def run_engine(args: argparse.Namespace) -> dict:
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        modes = [(0.0, False), (args.ttl_s, False)]
        if args.pause_oracle:  # the client announces each turn's next pause
            modes.append((args.ttl_s, True))
        for repeat in range(args.engine_repeats):  # alternating: the machine's load drifts
            for ttl_s, announce in modes:
                row = run_once(args, ttl_s, Path(workdir), announce)
                row["num_blocks"] = args.engine_num_kv_blocks
                row["repeat"] = repeat
                rows.append(row)
                print(json.dumps(row), flush=True)
    from benchmarks.session_pins import print_rows

    print_rows(rows)
    return {"machine": machine(num_threads=1), "args": vars(args) | {"json": None}, "rows": rows}
