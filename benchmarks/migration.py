"""Live migration on this machine: what a move costs a stream, and what rebalancing buys.

Two `corral serve` replicas pinned to one core each behind `corral router --migration`.

1. Stall. One streamed request at a time (random token ids, --stall-prompts lengths, 96 output
   tokens); after --move-after tokens reach the client, it is moved (from another thread, so
   the client keeps reading). Measured at the client: the longest gap between chunks from the
   move on (the stall), against the median gap between chunks of the same stream; whether the
   output equals an unmoved run's; the KV fetched per move. Modes: `precopy` (the router's
   POST /admin/migrate: blocks lent and prefetched while it runs, then a stop for the rest),
   `stop-and-copy` (POST /corral/migrate_out on the replica: stop, then copy every block), both
   on replicas with --kv-role both, and `recompute` (replicas without a KV connector: the
   target computes prompt and output so far itself).
2. Rebalancing under KV pressure. A Poisson workload whose output lengths are bimodal
   (--long-fraction of the requests long) on replicas with a small KV pool (--num-kv-blocks),
   routed least-outstanding: without rebalancing, and with --rebalance-kv-usage (the most
   loaded replica moves its largest request to the other). Reported: preemptions on the
   replicas, TPOT and end-to-end latency (p50, p99), requests moved.
3. Drain. With --drain-requests streams running on replica 0, POST /admin/drain: the time until
   replica 0 runs nothing, against the time the same requests take to finish unmoved.

    .venv/bin/python -m benchmarks.migration                # about 6 minutes
    .venv/bin/python -m benchmarks.migration --quick --json-out /tmp/m.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.router import warm_up  # noqa: E402
from benchmarks.router_procs import (  # noqa: E402
    Child,
    CpuMeter,
    machine,
    resolve_model,
    run_stopping_on_sigterm,
    scrape,
    start_replica,
    wait_idle,
    wait_router_ready,
)
from corral.workloads import RequestSpec, Workload  # noqa: E402

NUM_OUTPUT_TOKENS = 96
PRESSURE_SERIES = {
    "vllm:num_preemptions_total": "preemptions",
    "corral:kv_transfer_fetches_ok_total": "fetches_ok",
    "corral:kv_transfer_fetched_bytes_total": "bytes",
    "corral:kv_transfer_fetch_seconds_total": "seconds",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model directory (default: the demo)")
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--cores", default="0,1")
    parser.add_argument("--stall-prompts", default="32,192,384")
    parser.add_argument("--move-after", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--num-kv-blocks", type=int, default=96)
    parser.add_argument("--num-requests", type=int, default=120)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--long-fraction", type=float, default=0.35)
    parser.add_argument("--rebalance-kv-usage", type=float, default=0.85)
    parser.add_argument("--drain-requests", type=int, default=4)
    parser.add_argument("--dtype", default=None, help="the replicas' --dtype (default: model's)")
    parser.add_argument("--only", choices=("stall", "pressure"), default=None,
                        help="run one part (pressure includes the drain)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="fewer repeats and requests")
    parser.add_argument("--json-out", default=str(REPO / "docs/figures/migration.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.num_requests, args.stall_prompts = 2, 30, "32,192"
    return args


def start_cluster(
    stack: ExitStack, args: argparse.Namespace, model_dir: str, kv: bool, router_flags: list[str],
    work: Path, name: str, vocab: int,
) -> tuple[Child, list[str]]:  # fmt: skip
    flags = ["--model", model_dir, "--max-model-len", str(args.max_model_len), "--seed", "0"]
    flags += ["--num-kv-blocks", str(args.num_kv_blocks)]
    if args.dtype:
        flags += ["--dtype", args.dtype]
    if kv:
        flags += ["--kv-role", "both"]
    replicas = []
    for index, core in enumerate(int(c) for c in args.cores.split(",")[:2]):
        step_log = work / f"{name}-{index}.steps.jsonl"
        replica = start_replica(flags, core, step_log, work / f"{name}-{index}.log")
        stack.callback(replica.stop)
        replicas.append(replica)
    for replica in replicas:
        replica.wait_healthy()
        warm_up(replica.url, vocab)
    argv = ["router", "--policy", "least-outstanding", "--migration", "--poll-interval-s", "0.2"]
    argv += ["--rebalance-interval-s", "0.2", *router_flags]
    for replica in replicas:
        argv += ["--backend", replica.url]
    router = Child(argv, work / f"{name}-router.log")
    stack.callback(router.stop)
    wait_router_ready(router, 2)
    return router, [replica.url for replica in replicas]


def model_name(url: str) -> str:
    return httpx.get(url + "/v1/models", timeout=10).json()["data"][0]["id"]


def stream_with_times(url: str, body: dict, on_chunk: Any = None) -> tuple[str, list[float]]:
    """A streamed completion: its text and each chunk's arrival time."""
    text, times = [], []
    with (
        httpx.Client(timeout=300) as client,
        client.stream("POST", url + "/v1/completions", json=body | {"stream": True}) as response,
    ):
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                raise RuntimeError(event["error"])
            for choice in event["choices"]:
                text.append(choice["text"])
                times.append(time.perf_counter())
                if on_chunk is not None:
                    on_chunk(len(times))
    return "".join(text), times


_CLIENT = httpx.Client(timeout=30)  # one client: a fresh one per call costs ~40 ms here


def move_out(replica_urls: list[str], router_url: str | None = None) -> None:
    """Ask the replicas in turn to move one request out until one has: directly (stop and
    copy everything), or through the router's POST /admin/migrate (pre-copy first)."""
    for _ in range(2000):
        for url in replica_urls:
            if router_url is None:
                moved = _CLIENT.post(url + "/corral/migrate_out", json={}).json()["migrated"]
            else:
                answer = _CLIENT.post(router_url + "/admin/migrate", json={"url": url})
                moved = answer.json()["migrated"]
            if moved:
                return
        time.sleep(0.001)
    raise RuntimeError("no replica had the request to move")


def measure_stall(
    router_url: str, replica_urls: list[str], args: argparse.Namespace, vocab: int, precopy: bool
) -> list[dict]:
    model = model_name(router_url)
    rng = random.Random(0)
    results = []
    for num_prompt in (int(n) for n in args.stall_prompts.split(",")):
        stalls, gaps, equal = [], [], 0
        before = [scrape(url, PRESSURE_SERIES) for url in replica_urls]
        for _ in range(args.repeats):
            ids = [rng.randrange(10, vocab) for _ in range(num_prompt)]
            body = {"model": model, "prompt": ids, "max_tokens": NUM_OUTPUT_TOKENS,
                    "temperature": 0, "ignore_eos": True}  # fmt: skip
            movers: list[threading.Thread] = []

            def on_chunk(count: int, movers: list[threading.Thread] = movers) -> None:
                if count == args.move_after and not movers:  # off the reading thread
                    via = router_url if precopy else None
                    movers.append(threading.Thread(target=move_out, args=(replica_urls, via)))
                    movers[0].start()

            text, times = stream_with_times(router_url, body, on_chunk)
            movers[0].join(30)
            # The unmoved run after the moved one, its own cache salt: no block of the moved run
            # is a prefix hit for it (in bf16 a hit computed another way can change a token).
            unmoved = body | {"cache_salt": f"unmoved-{rng.random()}"}
            expected = _CLIENT.post(replica_urls[0] + "/v1/completions", json=unmoved)
            equal += text == expected.json()["choices"][0]["text"]
            deltas = [b - a for a, b in zip(times, times[1:])]
            stall = max(deltas[args.move_after - 1 :])  # the move happens after this chunk
            stalls.append(stall * 1e3)
            gaps.append(statistics.median(deltas) * 1e3)
        after = [scrape(url, PRESSURE_SERIES) for url in replica_urls]
        fetched = sum(a["fetches_ok"] - b["fetches_ok"] for a, b in zip(after, before))
        moved_bytes = sum(a["bytes"] - b["bytes"] for a, b in zip(after, before))
        seconds = sum(a["seconds"] - b["seconds"] for a, b in zip(after, before))
        results.append({
            "num_prompt_tokens": num_prompt,
            "num_context_tokens_at_move": num_prompt + args.move_after,
            "stall_ms_median": statistics.median(stalls),
            "stall_ms": stalls,
            "chunk_gap_ms_median": statistics.median(gaps),
            "outputs_equal_unmoved": f"{equal}/{args.repeats}",
            "fetches_ok": fetched,  # pre-copy: two per move (the prefetch, the final copy)
            "bytes_per_move": moved_bytes / args.repeats,
            "fetch_ms_per_move": 1e3 * seconds / args.repeats,
        })  # fmt: skip
        row = results[-1]
        print(f"  prompt {num_prompt:>4}: stall {row['stall_ms_median']:.1f} ms (chunk gap "
              f"{row['chunk_gap_ms_median']:.1f} ms), equal {row['outputs_equal_unmoved']}, "
              f"{row['bytes_per_move'] / 1e3:.0f} KB/move", flush=True)  # fmt: skip
    return results


def pressure_workload(args: argparse.Namespace, vocab: int) -> Workload:
    rng = random.Random(1)
    specs, arrival = [], 0.0
    for index in range(args.num_requests):
        arrival += rng.expovariate(args.rate)
        long = rng.random() < args.long_fraction
        num_output = rng.randint(300, 420) if long else rng.randint(16, 48)
        specs.append(RequestSpec(f"p{index}", arrival, rng.randint(24, 64), num_output,
                                 token_seed=index))  # fmt: skip
    return Workload("bimodal-pressure", specs, vocab_size=vocab)


def measure_pressure(
    router_url: str, replica_urls: list[str], workload: Workload, rebalance: bool
) -> dict[str, Any]:
    from corral.bench.payload import RequestOptions
    from corral.bench.serve import ServeTarget, run_serve_benchmark

    before = [scrape(url, PRESSURE_SERIES) for url in replica_urls]
    moved_before = scrape(router_url, {"corral:router_migrations_requested_total": "moved"})
    meter = CpuMeter()
    report, _ = run_serve_benchmark(
        workload,
        RequestOptions(prompt_format="ids"),
        ServeTarget(router_url, show_progress=False, request_timeout_s=600),
    )
    cpu = meter.stop()
    wait_idle(replica_urls)
    after = [scrape(url, PRESSURE_SERIES) for url in replica_urls]
    moved = scrape(router_url, {"corral:router_migrations_requested_total": "moved"})
    s = report.summary
    return {
        "rebalance": rebalance,
        "num_completed": s.num_completed,
        "num_failed": s.num_failed,
        "preemptions": sum(a["preemptions"] - b["preemptions"] for a, b in zip(after, before)),
        "moved": moved["moved"] - moved_before["moved"],
        "tpot_p50_ms": s.tpot.median_ms,
        "tpot_p99_ms": s.tpot.p99_ms,
        "e2e_p50_s": s.e2e.median_ms / 1e3,
        "e2e_p99_s": s.e2e.p99_ms / 1e3,
        "ttft_p99_ms": s.ttft.p99_ms,
        "cpu": cpu,
    }


def measure_drain(router_url: str, replica_urls: list[str], args: argparse.Namespace,
                  vocab: int, drain: bool) -> float:  # fmt: skip
    """Seconds from POST /admin/drain of replica 0 (or, unmoved, from the same moment) until
    replica 0 runs nothing, with 2 x --drain-requests long streams through the router."""
    model = model_name(router_url)
    rng = random.Random(2)
    threads, failures = [], []

    def stream(body: dict) -> None:
        try:
            stream_with_times(router_url, body)
        except Exception as error:  # counted and reported, not raised in a thread
            failures.append(repr(error))

    for _ in range(2 * args.drain_requests):  # least-outstanding: half of them on replica 0
        body = {"model": model, "prompt": [rng.randrange(10, vocab) for _ in range(64)],
                "max_tokens": 400, "temperature": 0, "ignore_eos": True}  # fmt: skip
        thread = threading.Thread(target=stream, args=(body,))
        thread.start()
        threads.append(thread)
    deadline = time.monotonic() + 60
    while scrape(replica_urls[0])["running"] < args.drain_requests:
        if time.monotonic() > deadline:
            raise RuntimeError("replica 0 never ran its share of the streams")
        time.sleep(0.005)
    start = time.perf_counter()
    if drain:
        answer = httpx.post(router_url + "/admin/drain", json={"url": replica_urls[0]})
        answer.raise_for_status()
    while scrape(replica_urls[0])["running"] > 0:
        time.sleep(0.005)
    elapsed = time.perf_counter() - start
    for thread in threads:
        thread.join(300)
    if failures:
        raise RuntimeError(f"{len(failures)} drain streams failed: {failures[:2]}")
    if drain:
        httpx.post(router_url + "/admin/drain", json={"url": replica_urls[0], "drain": False})
    return elapsed


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    return run_stopping_on_sigterm(lambda: run_benchmark(args))


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    import tempfile

    model_dir, vocab = resolve_model(args)
    work = Path(tempfile.mkdtemp(prefix="corral-migration-"))
    result: dict[str, Any] = {"machine": machine(), "model": Path(model_dir).name,
                              "args": vars(args), "stall": {}, "pressure": []}  # fmt: skip
    for config in ("kv", "recompute") if args.only != "pressure" else ():
        with ExitStack() as stack:
            router, urls = start_cluster(stack, args, model_dir, config == "kv", [], work,
                                         f"stall-{config}", vocab)  # fmt: skip
            modes = ("stop-and-copy", "precopy") if config == "kv" else ("recompute",)
            for mode in modes:
                print(f"stall, {mode}:", flush=True)
                precopy = mode == "precopy"
                result["stall"][mode] = measure_stall(router.url, urls, args, vocab, precopy)
    workload = pressure_workload(args, vocab)
    for rebalance in (False, True) if args.only != "stall" else ():
        flags = ["--rebalance-kv-usage", str(args.rebalance_kv_usage)] if rebalance else []
        with ExitStack() as stack:
            router, urls = start_cluster(stack, args, model_dir, True, flags, work,
                                         f"pressure-{rebalance}", vocab)  # fmt: skip
            run = measure_pressure(router.url, urls, workload, rebalance)
            if rebalance:
                result["drain"] = {
                    "unmoved_s": measure_drain(router.url, urls, args, vocab, drain=False),
                    "drained_s": measure_drain(router.url, urls, args, vocab, drain=True),
                    "num_requests": args.drain_requests,
                }
        result["pressure"].append(run)
        print(f"pressure, rebalance {rebalance}: {run['preemptions']:.0f} preemptions, "
              f"{run['moved']:.0f} moved, TPOT p50 {run['tpot_p50_ms']:.1f} p99 "
              f"{run['tpot_p99_ms']:.1f} ms, e2e p99 {run['e2e_p99_s']:.2f} s, "
              f"{run['num_failed']} failed", flush=True)  # fmt: skip
    drain = result.get("drain")
    if drain is not None:
        print(f"drain of {drain['num_requests']} streams: {drain['drained_s']:.2f} s moved, "
              f"{drain['unmoved_s']:.2f} s to finish unmoved")  # fmt: skip
    Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json_out).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
