"""Tensor parallelism on one machine: --tensor-parallel-size 2 (1 torch thread per rank) against 1
(all threads in one process), single-stream decode tok/s and batch-32 output tok/s.

Model: the random-weight SmolLM-135M-shaped reference (corral.bench.reference; 9 query and 3 KV
heads, so 2 ranks hold 2 + 1 KV heads), bf16 by default. Both engines live in this process at
once (the N=2 one with its worker process); rounds alternate between them so that a slow moment
of a shared machine hits both. Each rank gets threads // N torch threads (the process-wide torch
setting is switched before each engine's round). Results go to docs/figures/tensor_parallel.json.

    .venv/bin/python benchmarks/tensor_parallel.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

from corral import LLM, SamplingParams
from corral.bench.offline.ceiling import single_request_decode
from corral.bench.reference import smollm_shaped_model
from corral.model.arch import ModelArch


def batch_throughput(llm: LLM, batch: int, prompt_len: int, output_len: int, seed: int) -> float:
    """Output tokens/s of `batch` requests of random prompts (fresh per round, so the prefix
    cache does not carry over), each generating exactly output_len tokens."""
    generator = torch.Generator().manual_seed(seed)
    prompts = [
        {"prompt_token_ids": torch.randint(100, 2000, (prompt_len,), generator=generator).tolist()}
        for _ in range(batch)
    ]
    params = SamplingParams(max_tokens=output_len, temperature=0.0, ignore_eos=True)
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    return sum(len(output.outputs[0].token_ids) for output in outputs) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--threads", type=int, default=0, help="0: torch's default")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--json", type=Path, default=Path("docs/figures/tensor_parallel.json"))
    args = parser.parse_args()
    threads = args.threads or torch.get_num_threads()
    model_dir = smollm_shaped_model()
    arch = ModelArch.from_dir(model_dir)
    engines = {}
    for size in (1, 2):
        torch.set_num_threads(threads)
        engines[size] = LLM(
            str(model_dir),
            dtype=args.dtype,
            num_threads=threads,
            tensor_parallel_size=size,
            max_model_len=1024,
            kv_cache_memory="1GiB",
            max_num_seqs=args.batch,
        )
    # (name, engine, torch threads per rank): N=1 on all threads, N=2 on threads // 2 each, and
    # N=1 on threads // 2 (the same engine): what one rank's share of the cores does alone.
    arms = [("tp1", 1, threads), ("tp2", 2, max(1, threads // 2))]
    if threads > 1:
        arms.append((f"tp1_{threads // 2}thread", 1, threads // 2))
    rounds: dict[str, dict[str, list[float]]] = {
        name: {"decode": [], "batch": []} for name, *_ in arms
    }
    try:
        for _, size, per_rank in arms:  # warm-up
            torch.set_num_threads(per_rank)
            single_request_decode(engines[size], 16)
            batch_throughput(engines[size], 4, args.prompt_len, 8, seed=0)
        for index in range(args.rounds):
            for name, size, per_rank in arms:
                torch.set_num_threads(per_rank)
                llm = engines[size]
                decode = single_request_decode(llm, args.decode_tokens)
                batch = batch_throughput(
                    llm, args.batch, args.prompt_len, args.output_len, seed=1 + index
                )
                rounds[name]["decode"].append(decode)
                rounds[name]["batch"].append(batch)
                print(
                    f"round {index + 1} {name} ({per_rank} thread(s) per rank): "
                    f"decode {decode:.1f} tok/s, batch-{args.batch} {batch:.1f} out tok/s",
                    flush=True,
                )
    finally:
        for llm in engines.values():
            llm.shutdown()
    results: dict = {
        name: {
            "tensor_parallel_size": size,
            "threads_per_rank": per_rank,
            "decode_tokens_per_s": statistics.median(rounds[name]["decode"]),
            f"batch{args.batch}_output_tokens_per_s": statistics.median(rounds[name]["batch"]),
            "rounds": rounds[name],
        }
        for name, size, per_rank in arms
    }
    for key in ("decode_tokens_per_s", f"batch{args.batch}_output_tokens_per_s"):
        results[f"ratio_tp2_over_tp1_{key}"] = results["tp2"][key] / results["tp1"][key]
    load = Path("/proc/loadavg").read_text().split()[:3]
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model_name = next(
        (line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line),
        platform.processor(),
    )
    report = {
        "command": "python benchmarks/tensor_parallel.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "json"),
        "machine": {"cpu": model_name, "cpus": threads, "torch": torch.__version__}
        | {"load_average_at_end": load},
        "model": {"name": "SmolLM-135M-shaped (random)", "dtype": args.dtype}
        | {"num_heads": arch.num_heads, "num_kv_heads": arch.num_kv_heads},
        "results": results,
    }
    print(json.dumps(report["results"], indent=1))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
