"""What corral's KV storage options buy, measured with `corral bench` against `corral serve`.

Part `prefix` (issue 5): real GSM8K questions with 8 worked examples before each (a ~1,300-token
shared prefix) and multi-turn conversations (each turn extends the previous turn's context),
Poisson arrivals, against servers with prefix caching off, on (a device pool larger than the
working set), on with a device pool too small for it, and that small pool plus the host-memory
and disk tiers. Reports TTFT p50/p99, throughput and the prefix hit rate (from /metrics).

Part `kv-dtype`: the same KV memory budget in bf16 and int8 (and fp32 with an fp32 model):
tokens the pool holds, the most requests running at once, and offline output throughput on a
batch that needs more KV than the bf16 pool holds.

Model: random weights shaped like SmolLM-135M with the demo model's GSM8K tokenizer
(corral.bench.reference.smollm_shaped_text_model).

    .venv/bin/python -m benchmarks.kv_storage --part prefix --json /tmp/kv_prefix.json
    .venv/bin/python -m benchmarks.kv_storage --part kv-dtype --json /tmp/kv_dtype.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.serve_reference import ServerProcess, conditions
from corral.bench.payload import RequestOptions
from corral.bench.reference import smollm_shaped_text_model
from corral.bench.serve import ServeTarget, run_serve_benchmark
from corral.workloads import ArrivalOptions, WorkloadOptions, build_workload

# Prometheus counters read after each run (name -> column).
_COUNTERS = {
    "corral:prefix_cache_queries": "prefix_query_tokens",
    "corral:prefix_cache_hits": "prefix_hit_tokens",
    "corral:prefix_cache_evictions": "evictions",
    "corral:kv_host_tier_loads": "host_loads",
    "corral:kv_disk_tier_reads": "disk_reads",
    "corral:kv_host_tier_saves": "host_saves",
    "corral:kv_disk_tier_writes": "disk_writes",
}


def read_counters(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics", timeout=10).text
    values: dict[str, float] = {}
    for name, column in _COUNTERS.items():
        pattern = re.escape(name) + r"_total\{[^}]*\} ([0-9.e+]+)"
        values[column] = sum(float(v) for v in re.findall(pattern, text))
    return values


def workloads(args: argparse.Namespace, model_dir: Path) -> dict[str, WorkloadOptions]:
    return {
        "gsm8k-8shot": WorkloadOptions(
            dataset="gsm8k",
            num_requests=args.num_requests,
            num_shots=8,
            fixed_output_len=args.output_len,
            tokenizer=str(model_dir),
            arrival=ArrivalOptions("poisson", rate=args.gsm8k_rate),
            seed=args.seed,
        ),
        "multi-turn": WorkloadOptions(
            dataset="multi-turn",
            num_requests=args.num_conversations * args.num_turns,
            num_turns=args.num_turns,
            input_len=args.turn_words,
            output_len=args.output_len,
            think_time_s=args.think_time_s,
            tokenizer=str(model_dir),
            arrival=ArrivalOptions("poisson", rate=args.conversation_rate),
            seed=args.seed,
        ),
    }


def server_configs(args: argparse.Namespace, disk_dir: Path) -> dict[str, list[str]]:
    small = ["--num-kv-blocks", str(args.small_pool_blocks)]
    tiers = ["--host-cache-memory", args.host_cache_memory, "--disk-cache-dir", str(disk_dir)]
    tiers += ["--disk-cache-max-bytes", args.disk_cache_max_bytes]
    disk = ["--host-cache-memory", args.small_host_cache_memory, "--disk-cache-dir"]
    disk += [str(disk_dir) + "-2", "--disk-cache-max-bytes", args.disk_cache_max_bytes]
    return {
        "off": ["--no-prefix-caching"],
        "on": [],
        "on, small pool": small,
        "on, small pool + host/disk tiers": small + tiers,
        "on, small pool + small host + disk tiers": small + disk,
    }


def run_prefix(args: argparse.Namespace) -> dict:
    model_dir = smollm_shaped_text_model()
    common = ["--model", str(model_dir), "--dtype", "bfloat16", "--max-model-len", "4096"]
    common += ["--num-threads", str(args.server_threads), "--kv-cache-memory", args.kv_memory]
    common += ["--max-num-batched-tokens", str(args.max_num_batched_tokens)]
    results = []
    with tempfile.TemporaryDirectory(prefix="corral-kv-bench-") as tmp:
        configs = server_configs(args, Path(tmp) / "disk")
        for workload_name, options in workloads(args, model_dir).items():
            if workload_name not in args.workloads:
                continue
            workload = build_workload(options)
            lengths = [spec.num_prompt_tokens for spec in workload]
            print(
                f"== {workload_name}: {len(lengths)} requests, prompt mean "
                f"{sum(lengths) / len(lengths):.0f} tokens, output {args.output_len}",
                flush=True,
            )
            for config_name, extra in configs.items():
                if workload_name == "gsm8k-8shot" and config_name not in args.gsm8k_configs:
                    continue
                if args.configs and config_name not in args.configs:
                    continue
                log = Path(tmp) / f"server-{len(results)}.log"
                with ServerProcess(common + extra, log) as server:
                    target = ServeTarget(server.url, num_warmup_requests=0, show_progress=False)
                    report, _ = run_serve_benchmark(
                        workload, RequestOptions(model=model_dir.name), target
                    )
                    counters = read_counters(server.url)
                summary = report.summary
                queries = counters["prefix_query_tokens"]
                row = {
                    "workload": workload_name,
                    "config": config_name,
                    "server_args": extra,
                    "completed": summary.num_completed,
                    "failed": summary.num_failed,
                    "ttft_p50_ms": summary.ttft.median_ms,
                    "ttft_p99_ms": summary.ttft.p99_ms,
                    "ttft_mean_ms": summary.ttft.mean_ms,
                    "tpot_p50_ms": summary.tpot.median_ms,
                    "output_tok_s": summary.output_throughput,
                    "request_s": summary.request_throughput,
                    "prefix_hit_rate": counters["prefix_hit_tokens"] / queries if queries else 0.0,
                    **counters,
                }
                results.append(row)
                print(json.dumps(row), flush=True)
    return {"rows": results, "table": prefix_table(results)}


def prefix_table(rows: list[dict]) -> str:
    lines = [
        "| workload | prefix caching | TTFT p50 / p99 (ms) | output tok/s | req/s | prefix hit "
        "rate | host / disk blocks loaded |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workload']} | {r['config']} | {r['ttft_p50_ms']:.0f} / {r['ttft_p99_ms']:.0f} "
            f"| {r['output_tok_s']:.1f} | {r['request_s']:.3f} | {r['prefix_hit_rate']:.1%} "
            f"| {r['host_loads']:.0f} / {r['disk_reads']:.0f} |"
        )
    return "\n".join(lines)


def run_kv_dtype(args: argparse.Namespace) -> dict:
    """Same KV byte budget per KV dtype: pool tokens, peak running requests, throughput."""
    from corral import LLM, SamplingParams

    model_dir = smollm_shaped_text_model()
    params = SamplingParams(temperature=0, max_tokens=args.batch_output_len, ignore_eos=True)
    prompts = [
        {"prompt_token_ids": [(7 * i + 13 * j) % 4000 + 5 for j in range(args.batch_prompt_len)]}
        for i in range(args.batch_requests)
    ]
    rows = []
    for model_dtype, kv_dtype in (("float32", "auto"), ("bfloat16", "auto"), ("bfloat16", "int8")):
        llm = LLM(
            model=str(model_dir),
            dtype=model_dtype,
            kv_cache_dtype=kv_dtype,
            kv_cache_memory=args.kv_dtype_budget,
            max_model_len=1024,
            max_num_seqs=args.batch_requests,
            max_num_batched_tokens=args.max_num_batched_tokens,
            enable_prefix_caching=False,
        )
        engine = llm.engine
        num_tokens = engine.kv_manager.num_blocks * engine.kv_manager.block_size
        llm.generate(prompts[:2], params, use_tqdm=False)  # warm-up
        for index, prompt in enumerate(prompts):
            engine.add_request(f"r{index}", prompt, params)
        peak_running = 0
        num_output = 0
        start = time.perf_counter()
        while engine.has_unfinished_requests():
            for output in engine.step():
                if output.finished:
                    num_output += len(output.outputs[0].token_ids)
            peak_running = max(peak_running, engine.core.stats().num_running)
        elapsed = time.perf_counter() - start
        row = {
            "model_dtype": model_dtype,
            "kv_dtype": kv_dtype if kv_dtype != "auto" else model_dtype,
            "kv_budget": args.kv_dtype_budget,
            "pool_tokens": num_tokens,
            "peak_running_requests": peak_running,
            "num_preemptions": engine.core.stats().num_preemptions,
            "output_tok_s": num_output / elapsed,
            "elapsed_s": elapsed,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        del llm, engine
    lines = [
        f"| model / KV dtype | pool tokens at {args.kv_dtype_budget} | peak running requests "
        f"| preemptions | output tok/s |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model_dtype']} / {r['kv_dtype']} | {r['pool_tokens']} "
            f"| {r['peak_running_requests']} | {r['num_preemptions']} | {r['output_tok_s']:.1f} |"
        )
    return {"rows": rows, "table": "\n".join(lines)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("prefix", "kv-dtype"), default="prefix")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--server-threads", type=int, default=2)
    parser.add_argument("--kv-memory", default="2GiB", help="device pool of the large configs")
    parser.add_argument("--max-num-batched-tokens", type=int, default=2048)
    parser.add_argument("--output-len", type=int, default=16)
    parser.add_argument("--num-requests", type=int, default=24, help="gsm8k requests")
    parser.add_argument("--gsm8k-rate", type=float, default=0.25, help="gsm8k req/s")
    parser.add_argument(
        "--workloads", default="gsm8k-8shot,multi-turn", type=lambda s: s.split(",")
    )
    parser.add_argument("--gsm8k-configs", default="off,on", type=lambda s: s.split(","))
    parser.add_argument("--num-conversations", type=int, default=12)
    parser.add_argument("--num-turns", type=int, default=4)
    parser.add_argument("--turn-words", type=int, default=150, help="words per user message")
    parser.add_argument("--think-time-s", type=float, default=2.0)
    parser.add_argument("--conversation-rate", type=float, default=0.3, help="new convs/s")
    parser.add_argument("--small-pool-blocks", type=int, default=240)
    parser.add_argument("--host-cache-memory", default="1GiB")
    parser.add_argument("--disk-cache-max-bytes", default="2GB")
    parser.add_argument("--small-host-cache-memory", default="24MiB")
    parser.add_argument(
        "--configs", default=None, type=lambda s: s.split(";"), help="';'-separated subset"
    )
    parser.add_argument("--kv-dtype-budget", default="96MiB")
    parser.add_argument("--batch-requests", type=int, default=32)
    parser.add_argument("--batch-prompt-len", type=int, default=256)
    parser.add_argument("--batch-output-len", type=int, default=64)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    before = conditions()
    print(f"conditions: {json.dumps(before)}", flush=True)
    result = run_prefix(args) if args.part == "prefix" else run_kv_dtype(args)
    print(result["table"])
    after = conditions()["load_average_1_5_15"]
    print(f"load average after: {after}")
    if args.json:
        document = {
            "command": sys.argv,
            "args": vars(args),
            "conditions_before": before,
            "load_average_after": after,
            **result,
        }
        args.json.write_text(json.dumps(document, indent=1, default=str))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
