"""corral serve, llama.cpp's llama-server and vLLM's CPU build (default settings and tuned threads)
up at once on one model, driven by corral's benchmark client, rounds alternating between engines.

Every round sends fresh prompts (random token ids from a round-specific seed; the same prompts to
every engine within a round, so no prefix cache carries over between rounds), with max_tokens and
ignore_eos so every engine generates the same count (checked from each stream's usage). Phases:
single-stream TPOT, output tok/s at concurrency 32 (128+128 tokens), a burst of Azure-conversation
requests, and a Poisson rate sweep; ratios corral/peer are taken within each round, then the median
over rounds. The machine's ceilings (read bandwidth, torch bf16 GEMM) are measured in the same run.

    bash benchmarks/peers/setup.sh && .venv/bin/python -m benchmarks.peers.run [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.peers import ceilings
from benchmarks.peers.model import MODEL_NAME, REPO, gguf_path, model_dir
from benchmarks.peers.report import ratios, write_page
from benchmarks.peers.servers import (
    Server,
    corral_server,
    llama_server,
    start_all,
    stop_all,
    vllm_server,
)
from corral.bench.payload import RequestOptions
from corral.bench.reference import azure_conv_options
from corral.bench.serve import ServeTarget, run_serve_benchmark
from corral.config import CPU_ISA_CAPS
from corral.core.slo_target import parse_slo
from corral.model.cpu_features import apply_cpu_isa, native_cpu_flags
from corral.workloads import ArrivalOptions, WorkloadOptions, build_workload

# Also: corral-t1, llama.cpp-t1 (one thread each), corral-4k (--no-huge-pages: weights and KV
# on 4 KiB pages, the A/B of corral/model/huge_pages.py), corral-int8 (--quantization int8),
# corral-int8-all (--quantization int8-all: the LM head too) and llama.cpp-q8 (the same
# checkpoint converted to llama.cpp's Q8_0, every weight 8-bit).
ENGINES = ("corral", "llama.cpp", "vllm", "vllm-tuned")
VOCAB = 49152  # the model's vocabulary: prompt ids are drawn from [1, VOCAB)
SLO = "ttft_ms=2000,tpot_ms=300"


def llama_repacks(choice: str) -> bool:
    """Whether llama-server repacks weights (its default). "auto" turns it off on CPUs with AMX
    int8: there the llama.cpp build of setup.sh (llama-cpp-python's vendored copy) loads Q8_0
    weights into its AMX buffers and dies with SIGILL at `tilezero` in a worker thread (seen on a
    Sapphire-Rapids-class Xeon); with --no-repack it runs its AVX-512 VNNI Q8_0 dot products."""
    if choice == "auto":
        return "amx_int8" not in native_cpu_flags()  # llama-server is not capped (--cpu-isa)
    return choice == "on"


def make_servers(args: argparse.Namespace, model: Path) -> list[Server]:
    servers = []
    engines = args.engines.split(",")
    repack = llama_repacks(args.llama_repack)
    if "corral" in engines:
        servers.append(corral_server(model, args.ctx, args.threads, args.slots))
    if "llama.cpp" in engines:
        servers.append(
            llama_server(gguf_path(model), args.ctx, args.threads, args.slots, repack=repack)
        )
    for name, method in (("corral-int8", "int8"), ("corral-int8-all", "int8-all")):
        if name in engines:  # int8 from the same bf16 checkpoint
            flags = ("--quantization", method)
            servers.append(corral_server(model, args.ctx, args.threads, args.slots, name, flags))
    if "llama.cpp-q8" in engines:
        gguf = gguf_path(model, "q8_0")
        servers.append(
            llama_server(
                gguf, args.ctx, args.threads, args.slots, name="llama.cpp-q8", repack=repack
            )
        )
    # One-thread variants (for a machine oversubscribed by other work).
    if "corral-t1" in engines:
        servers.append(corral_server(model, args.ctx, 1, args.slots, name="corral-t1"))
    if "corral-4k" in engines:
        servers.append(
            corral_server(
                model, args.ctx, args.threads, args.slots, "corral-4k", ("--no-huge-pages",)
            )
        )
    if "llama.cpp-t1" in engines:
        gguf = gguf_path(model)
        servers.append(
            llama_server(gguf, args.ctx, 1, args.slots, name="llama.cpp-t1", repack=repack)
        )
    if "vllm" in engines:
        # Default settings but the KV space: by default vLLM reserves 0.92 of the machine's
        # memory (--gpu-memory-utilization) and refuses to start when less is free.
        env = {"VLLM_CPU_KVCACHE_SPACE": str(args.vllm_kv_gib)}
        servers.append(vllm_server(model, "vllm", env, []))
    if "vllm-tuned" in engines:
        env = {
            "VLLM_CPU_OMP_THREADS_BIND": args.vllm_bind,
            "VLLM_CPU_KVCACHE_SPACE": str(args.vllm_kv_gib),
        }
        extra = ["--max-model-len", str(args.ctx), "--max-num-seqs", str(args.slots)]
        servers.append(vllm_server(model, "vllm-tuned", env, extra))
    return servers


def one_run(
    server: Server, workload_options: WorkloadOptions, concurrency: int | None
) -> dict[str, Any]:
    workload = build_workload(workload_options)
    target = ServeTarget(server.url, max_concurrency=concurrency, show_progress=False)
    options = RequestOptions(model=MODEL_NAME, prompt_format="ids")
    report, _ = run_serve_benchmark(workload, options, target, parse_slo(SLO))
    s = report.summary
    return {
        "completed": s.num_completed,
        "failed": s.num_failed,
        "errors": dict(list(s.errors.items())[:3]),
        "wrong_output_length": report.num_wrong_length,
        "token_sources": report.token_sources,
        "output_tokens": s.total_output_tokens,
        "input_tokens": s.total_input_tokens,
        "duration_s": s.duration_s,
        "output_tok_s": s.output_throughput,
        "tpot_p50_ms": s.tpot.median_ms,
        "tpot_p99_ms": s.tpot.p99_ms,
        "ttft_p50_ms": s.ttft.median_ms,
        "ttft_p99_ms": s.ttft.p99_ms,
        "goodput_req_s": s.goodput,
        "load_average": os.getloadavg(),
    }


def phases(args: argparse.Namespace) -> list[tuple[str, int | None, list[WorkloadOptions]]]:
    """(phase, client concurrency, one WorkloadOptions per round) for every phase."""
    burst = ArrivalOptions("burst")

    def random_rounds(num_requests: int, input_len: int, output_len: int, rounds: int, base: int):
        # fresh token ids each round (seed base + round): no prefix cache carries over
        return [
            WorkloadOptions(
                dataset="random",
                num_requests=num_requests,
                input_len=input_len,
                output_len=output_len,
                vocab_size=VOCAB,
                arrival=burst,
                seed=base + r,
            )
            for r in range(rounds)
        ]

    single = random_rounds(args.single_requests, 32, args.single_output, args.single_rounds, 1000)
    c32 = random_rounds(args.slots, args.c32_prompt, args.c32_output, args.c32_rounds, 2000)
    azure = [
        azure_conv_options(
            args.burst_requests, args.length_scale, args.ctx, vocab_size=VOCAB, arrival=burst
        )
        for _ in range(args.burst_rounds)
    ]
    azure = [_with_seed(o, 3000 + r) for r, o in enumerate(azure)]
    out: list[tuple[str, int | None, list[WorkloadOptions]]] = [
        ("single", 1, single),
        ("c32", args.slots, c32),
        ("burst", None, azure),
    ]
    for rate in args.rates:
        arrival = ArrivalOptions("poisson", rate=rate)
        options = azure_conv_options(
            args.rate_requests, args.length_scale, args.ctx, vocab_size=VOCAB, arrival=arrival
        )
        out.append((f"rate {rate:g}", None, [_with_seed(options, 4000 + int(rate * 100))]))
    return out


def _with_seed(options: WorkloadOptions, seed: int) -> WorkloadOptions:
    from dataclasses import replace

    return replace(options, seed=seed)


def warm_up(servers: list[Server]) -> None:
    options = WorkloadOptions(
        dataset="random",
        num_requests=8,
        input_len=64,
        output_len=16,
        vocab_size=VOCAB,
        arrival=ArrivalOptions("burst"),
        seed=99,
    )
    for server in servers:
        result = one_run(server, options, None)
        print(f"warm-up {server.name}: {result['completed']}/8 ok {result['errors']}", flush=True)


def run_phases(args: argparse.Namespace, servers: list[Server]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for phase, concurrency, rounds in phases(args):
        results[phase] = {server.name: [] for server in servers}
        for index, options in enumerate(rounds):
            shift = index % len(servers)
            for server in servers[shift:] + servers[:shift]:
                time.sleep(args.pause_s)  # let the previous engine's threads go idle
                result = one_run(server, options, concurrency)
                result["round"] = index
                results[phase][server.name].append(result)
                print(
                    f"{phase} round {index} {server.name:10s} out {result['output_tok_s']:7.1f}"
                    f" tok/s  TPOT p50 {result['tpot_p50_ms']:7.1f} ms  TTFT p50 "
                    f"{result['ttft_p50_ms']:7.0f} ms  ok {result['completed']}"
                    f"/{result['completed'] + result['failed']} wrong-len "
                    f"{result['wrong_output_length']} load {result['load_average'][0]:.1f}",
                    flush=True,
                )
    return results


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """Per phase and engine: the medians over rounds of the headline figures."""
    out: dict[str, Any] = {}
    for phase, by_engine in results.items():
        out[phase] = {}
        for engine, rounds in by_engine.items():

            def med(key: str, rounds: list = rounds) -> float | None:
                values = [r[key] for r in rounds if r[key] is not None]
                return statistics.median(values) if values else None

            out[phase][engine] = {
                key: med(key)
                for key in ("output_tok_s", "tpot_p50_ms", "ttft_p50_ms", "goodput_req_s")
            }
            out[phase][engine]["completed"] = sum(r["completed"] for r in rounds)
            out[phase][engine]["failed"] = sum(r["failed"] for r in rounds)
            out[phase][engine]["wrong_output_length"] = sum(
                r["wrong_output_length"] for r in rounds
            )
    return out


def versions() -> dict[str, str]:
    out = {}
    vllm_python = REPO / ".peers/vllm/bin/python"
    if vllm_python.is_file():
        code = "import importlib.metadata as m; print(m.version('vllm-cpu'))"
        run = subprocess.run([str(vllm_python), "-c", code], capture_output=True, text=True)
        out["vllm"] = run.stdout.strip() or "?"
    sdists = sorted((REPO / ".peers/src").glob("llama_cpp_python-*.tar.gz"))
    if sdists:
        out["llama.cpp"] = sdists[-1].name.removesuffix(".tar.gz").replace("_", "-")
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (1 round per phase)")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--reference", default="corral", help="the engine ratios are of")
    parser.add_argument("--ctx", type=int, default=1024, help="context per request")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--slots", type=int, default=32, help="concurrency of the c32 phase")
    parser.add_argument("--single-rounds", type=int, default=3)
    parser.add_argument("--single-requests", type=int, default=1)
    parser.add_argument("--single-output", type=int, default=32)
    # Sized for ~25 minutes on a shared 2-core AVX2 machine (load average ~10 from other work),
    # where torch's bf16 GEMM (corral, vLLM) runs at a few GFLOP/s; issue 19's shape is
    # --c32-prompt 128 --c32-output 128 --burst-requests 64 --length-scale 0.25 (hours here).
    parser.add_argument("--c32-rounds", type=int, default=2)
    parser.add_argument("--c32-prompt", type=int, default=16)
    parser.add_argument("--c32-output", type=int, default=16)
    parser.add_argument("--burst-rounds", type=int, default=2)
    parser.add_argument("--burst-requests", type=int, default=16)
    parser.add_argument("--length-scale", type=float, default=0.05)
    parser.add_argument("--rates", default="0.5,1")
    parser.add_argument("--rate-requests", type=int, default=6)
    parser.add_argument("--pause-s", type=float, default=2.0)
    parser.add_argument(
        "--llama-repack",
        choices=("auto", "on", "off"),
        default="auto",
        help="llama-server weight repacking (auto: off on CPUs with AMX int8, see llama_repacks)",
    )
    parser.add_argument(
        "--cpu-isa",
        choices=CPU_ISA_CAPS,
        default=None,
        help="cap the instruction sets of corral, oneDNN (corral's and vLLM's) and the ceilings "
        "(corral/model/cpu_features.py): avx512_bf16 stands in for a CPU without AMX (Zen 4)",
    )
    parser.add_argument("--vllm-bind", default="0-1", help="VLLM_CPU_OMP_THREADS_BIND (tuned)")
    parser.add_argument("--vllm-kv-gib", type=int, default=2, help="VLLM_CPU_KVCACHE_SPACE")
    parser.add_argument("--json", type=Path, default=REPO / "docs/figures/peers.json")
    parser.add_argument("--page", type=Path, default=REPO / "docs/peers.md")
    parser.add_argument("--log-dir", type=Path, default=REPO / ".peers/logs/run")
    args = parser.parse_args(argv)
    if args.quick:
        args.single_rounds, args.single_requests, args.single_output = 1, 1, 16
        args.c32_rounds, args.c32_prompt, args.c32_output = 1, 8, 8
        args.burst_rounds, args.burst_requests, args.length_scale = 1, 8, 0.02
        args.rates, args.rate_requests = "2", 4
        if args.json == REPO / "docs/figures/peers.json":
            args.json = REPO / ".peers/peers-quick.json"
            args.page = REPO / ".peers/peers-quick.md"
    args.rates = [float(rate) for rate in args.rates.split(",") if rate]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.time()
    model = model_dir()
    gguf_path(model)
    if args.cpu_isa is not None:
        apply_cpu_isa(args.cpu_isa)  # the servers inherit the environment it sets
    print("measuring the machine's ceilings ...", flush=True)
    machine = ceilings.measure()
    print(json.dumps(machine), flush=True)
    servers = make_servers(args, model)
    try:
        start_all(servers, args.log_dir)
        warm_up(servers)
        results = run_phases(args, servers)
    finally:
        stop_all(servers)
    engines = [server.name for server in servers]
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    document = {
        "command": [sys.executable, "-m", "benchmarks.peers.run", *(argv or sys.argv[1:])],
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "git_commit": commit,
        "versions": versions(),
        "wall_s": time.time() - started,
        "machine": machine,
        "load_average_end": os.getloadavg(),
        "settings": {k: v for k, v in vars(args).items() if not isinstance(v, Path)},
        "slo": SLO,
        "servers": {
            s.name: {"command": s.command, "env": s.env, "ready_after_s": s.ready_after_s}
            for s in servers
        },
        "summary": summary(results),
        "reference": args.reference,
        "ratios": ratios(results, engines, args.reference),
        "rounds": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=1) + "\n")
    print(f"wrote {args.json}")
    print(f"wrote {write_page(document, args.page)}")


if __name__ == "__main__":
    main()
