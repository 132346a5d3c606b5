"""Offline throughput of corral against transformers `generate` with static batches, and
single-request decode speed against the machine's memory-bandwidth ceiling.

Workload: the first N requests of the Azure LLM conversation trace (2023), lengths multiplied by
--length-scale so that a 2-core CPU finishes in minutes, on a random model shaped like
SmolLM-135M. Both engines get the same prompt token ids and must produce exactly the requested
number of output tokens (EOS ignored); neither detokenizes. Both are warmed up first. The
measuring code is corral.bench.offline (`corral bench throughput` runs the same thing).

    .venv/bin/python benchmarks/offline_throughput.py --dtypes bfloat16,float32
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from corral.bench.offline.backends import BackendOptions, make_backend
from corral.bench.offline.ceiling import read_bandwidth_gb_s, single_request_decode
from corral.bench.offline.measure import ThroughputResult, measure_throughput, workload_requests
from corral.bench.reference import azure_conv_options, smollm_shaped_model
from corral.llm import engine_config_from_kwargs
from corral.model.arch import ModelArch
from corral.workloads import build_workload


def _row(result: ThroughputResult) -> dict:
    return {
        "elapsed_s": result.elapsed_s,
        "output_tokens": result.num_output_tokens,
        "output_tokens_per_s": result.output_tokens_per_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-requests", type=int, default=64)
    parser.add_argument("--length-scale", type=float, default=0.25)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--max-num-batched-tokens", type=int, default=1024)
    parser.add_argument("--hf-batch-size", type=int, default=16)
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--decode-rounds", type=int, default=5)
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = smollm_shaped_model()
    arch = ModelArch.from_dir(model_dir)
    workload = build_workload(
        azure_conv_options(
            args.num_requests, args.length_scale, args.max_model_len, vocab_size=arch.vocab_size
        )
    )
    prompts, output_lens = workload_requests(workload)
    print(
        f"workload: {len(prompts)} requests, prompt mean "
        f"{sum(map(len, prompts)) / len(prompts):.0f}, output mean "
        f"{sum(output_lens) / len(output_lens):.0f} tokens "
        f"(Azure conv x{args.length_scale}); threads {torch.get_num_threads()}"
    )
    results = {}
    for dtype in args.dtypes.split(","):
        engine = engine_config_from_kwargs(
            model=str(model_dir),
            dtype=dtype,
            device=args.device,
            max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens,
            kv_cache_memory="4GiB",
            max_model_len=args.max_model_len,
        )
        options = BackendOptions(engine, batch_size=args.hf_batch_size)
        backend = make_backend("corral", options)
        corral_result = measure_throughput(backend, "corral", prompts, output_lens)
        row: dict = {"corral": _row(corral_result)}
        weight_bytes = arch.num_params() * torch.empty((), dtype=getattr(torch, dtype)).itemsize
        # The machine is shared: measure bandwidth and decode in alternating rounds and report
        # each round's fraction (a slow moment then hits both), summarized by the median.
        rounds = []
        for _ in range(args.decode_rounds):
            bandwidth = read_bandwidth_gb_s(weight_bytes)
            decode = single_request_decode(backend.llm, args.decode_tokens)
            ceiling = bandwidth * 1e9 / weight_bytes
            rounds.append((decode / ceiling, decode, bandwidth, ceiling))
        fraction, decode, bandwidth, ceiling = sorted(rounds)[len(rounds) // 2]
        row["single_request"] = {
            "decode_tokens_per_s": decode,
            "read_bandwidth_gb_s": bandwidth,
            "weight_bytes": weight_bytes,
            "ceiling_tokens_per_s": ceiling,
            "fraction_of_ceiling": fraction,
            "rounds": [
                {"fraction": f, "decode_tokens_per_s": d, "read_bandwidth_gb_s": b}
                for f, d, b, _ in rounds
            ],
        }
        del backend
        line = (
            f"{dtype}: corral {corral_result.output_tokens_per_s:.1f} out tok/s "
            f"({corral_result.elapsed_s:.1f} s)"
        )
        if not args.skip_transformers:
            hf = measure_throughput(
                make_backend("transformers", options), "transformers", prompts, output_lens
            )
            row["transformers"] = _row(hf)
            row["ratio"] = corral_result.output_tokens_per_s / hf.output_tokens_per_s
            line += (
                f"; transformers {hf.output_tokens_per_s:.1f} out tok/s "
                f"({hf.elapsed_s:.1f} s); ratio {row['ratio']:.2f}x"
            )
        print(line)
        print(
            f"{dtype}: single-request decode {decode:.1f} tok/s; ceiling {ceiling:.1f} tok/s "
            f"({weight_bytes / 1e6:.0f} MB weights at {bandwidth:.1f} GB/s read); "
            f"{100 * fraction:.0f}% of ceiling (median of {len(rounds)} rounds; all: "
            f"{', '.join(f'{100 * r[0]:.0f}%' for r in rounds)})"
        )
        results[dtype] = row
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {"args": vars(args) | {"json": str(args.json)}, "results": results},
                indent=2,
                default=str,
            )
        )


if __name__ == "__main__":
    main()
