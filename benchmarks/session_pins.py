"""Session KV pins (`--session-kv-ttl-s`): the TTFT of a conversation's turns after a tool
pause, with and without pins, under KV memory pressure.

Simulator part (the real scheduler and KV manager, roofline cost of Llama-3.1-8B on one H100):
the multi-turn workload (every turn extends the previous turn's context, issued --think-time-s
after it, the tool pause), Poisson conversation starts, a KV pool of --num-kv-blocks blocks so
that the other conversations' turns evict a paused conversation's cache. Each pool size runs
without pins and with a TTL; the table gives follow-up turns' TTFT (mean, p50, p99), first turns'
mean TTFT, the prefix hit rate and what the pins did.

Engine part (--engine): `corral serve` on the bundled demo model with a small KV pool, driven by
`corral bench serve --dataset multi-turn --send-session-ids` (real replies, chat endpoint), once
without pins and once with; follow-up turns' TTFT from the records.

    .venv/bin/python benchmarks/session_pins.py --json docs/figures/session_pins.json
    .venv/bin/python benchmarks/session_pins.py --engine \
        --json docs/figures/session_pins_engine.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import machine  # noqa: E402


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def split_ttfts(records, num_turns: int) -> tuple[list[float], list[float]]:
    """(first turns' TTFTs, follow-up turns' TTFTs) in seconds: turn = index % num_turns (the
    multi-turn dataset numbers a conversation's turns consecutively)."""
    first, follow = [], []
    for record in records:
        index = int(record["request_id"].rsplit("-", 1)[1])
        (first if index % num_turns == 0 else follow).append(record["ttft_s"])
    return first, follow


def summarize(first: list[float], follow: list[float]) -> dict:
    return {
        "follow_up_ttft_mean_ms": 1000 * statistics.mean(follow),
        "follow_up_ttft_p50_ms": 1000 * _percentile(follow, 0.5),
        "follow_up_ttft_p99_ms": 1000 * _percentile(follow, 0.99),
        "first_turn_ttft_mean_ms": 1000 * statistics.mean(first),
        "num_follow_ups": len(follow),
    }


def simulate(args: argparse.Namespace, num_blocks: int, ttl_s: float, oracle: bool = False) -> dict:
    from corral.config import SchedulerConfig
    from corral.sim.api import simulate_result
    from corral.sim.deployment import DeploymentOptions
    from corral.workloads.arrivals import ArrivalOptions
    from corral.workloads.builder import build_workload
    from corral.workloads.options import WorkloadOptions

    workload = build_workload(
        WorkloadOptions(
            dataset="multi-turn",
            num_requests=args.num_conversations * args.num_turns,
            num_turns=args.num_turns,
            think_time_s=args.think_time_s,
            think_time_dist=args.think_time_dist,
            input_len=args.input_len,
            output_len=args.output_len,
            range_ratio=0.5,
            arrival=ArrivalOptions("poisson", rate=args.conversation_rate),
            max_model_len=args.max_model_len,
        )
    )
    deployment = DeploymentOptions(
        num_blocks=num_blocks,
        max_model_len=args.max_model_len,
        scheduler=SchedulerConfig(session_kv_ttl_s=ttl_s),
        session_pause_oracle=oracle,
    )
    result = simulate_result(workload, deployment)
    records = [{"request_id": r.request_id, "ttft_s": r.ttft_s} for r in result.records if r.is_ok]
    first, follow = split_ttfts(records, args.num_turns)
    scheduler = result.instances[0].scheduler
    stats = scheduler.stats()
    row = {"num_blocks": num_blocks, "session_kv_ttl_s": ttl_s, "pause_oracle": oracle}
    row.update(summarize(first, follow))
    row["prefix_hit_rate"] = stats.prefix_hit_rate
    row["num_preemptions"] = stats.num_preemptions
    if stats.session_pins is not None:
        pins = stats.session_pins
        row["pins"] = {
            "pinned": pins.num_pinned,
            "hits": pins.num_hits,
            "expired": pins.num_expired,
            "reclaimed": pins.num_reclaimed,
        }
    return row


def print_rows(rows: list[dict]) -> None:
    print(
        "| KV blocks | TTL s | follow-up TTFT mean / p50 / p99 ms | first turn mean ms | "
        "prefix hit rate | pins: made / hits / expired / reclaimed |"
    )
    print("|---|---|---|---|---|---|")
    for row in rows:
        pins = row.get("pins")
        pin_text = (
            f"{pins['pinned']} / {pins['hits']} / {pins['expired']} / {pins['reclaimed']}"
            if pins
            else "-"
        )
        print(
            f"| {row['num_blocks']} | {row['session_kv_ttl_s']:g}"
            f"{' (announced pauses)' if row.get('pause_oracle') else ''} | "
            f"{row['follow_up_ttft_mean_ms']:.1f} / {row['follow_up_ttft_p50_ms']:.1f} / "
            f"{row['follow_up_ttft_p99_ms']:.1f} | {row['first_turn_ttft_mean_ms']:.1f} | "
            f"{100 * row['prefix_hit_rate']:.1f}% | {pin_text} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-conversations", type=int, default=150)
    parser.add_argument("--num-turns", type=int, default=4)
    parser.add_argument("--think-time-s", type=float, default=5.0)
    parser.add_argument(
        "--think-time-dist",
        default="fixed",
        help="fixed, exponential, lognormal:SIGMA or measured:PATH (e.g. docs/figures/"
        "tool_latencies.txt, rescaled to --think-time-s)",
    )
    parser.add_argument("--input-len", type=int, default=512)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--conversation-rate", type=float, default=1.0)
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--num-kv-blocks", default="1500,3000", help="pool sizes to try")
    parser.add_argument("--ttl-s", type=float, default=30.0)
    parser.add_argument(
        "--pause-oracle",
        action="store_true",
        help="also run pins with each turn announcing its next pause exactly",
    )
    parser.add_argument("--engine", action="store_true", help="the engine part instead")
    parser.add_argument("--engine-model", default="corral-demo")
    parser.add_argument("--engine-num-kv-blocks", type=int, default=96)
    parser.add_argument("--engine-max-num-seqs", type=int, default=8)
    parser.add_argument("--engine-num-conversations", type=int, default=40)
    parser.add_argument("--engine-num-turns", type=int, default=4)
    parser.add_argument("--engine-think-time-s", type=float, default=2.0)
    parser.add_argument("--engine-conversation-rate", type=float, default=2.0)
    parser.add_argument("--engine-repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.engine:
        from benchmarks.session_pins_engine import run_engine

        result = run_engine(args)
    else:
        modes = [(0.0, False), (args.ttl_s, False)]
        if args.pause_oracle:
            modes.append((args.ttl_s, True))
        rows = [
            simulate(args, int(num_blocks), ttl, oracle)
            for num_blocks in args.num_kv_blocks.split(",")
            for ttl, oracle in modes
        ]
        print_rows(rows)
        result = {"machine": machine(), "args": vars(args) | {"json": None}, "rows": rows}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
