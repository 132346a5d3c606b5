"""Packed bf16 weights (corral/model/packed_weight.py) against the plain layout, same run: the
kernel's weight streaming at one row (GB/s) and its GFLOP/s at 32 rows, per SmolLM-135M shape,
beside the machine's read bandwidth; then single-stream decode of the SmolLM-135M-shaped bf16
model (and int8 layers with a bf16 head) with packing on and off, rounds alternating.

    .venv/bin/python -m benchmarks.packed_weights --json docs/figures/packed_weights.json
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from benchmarks.peers.ceilings import cpu_facts, read_bandwidth_gbs
from benchmarks.single_stream import ms_per_token
from corral.model.kernels import cpu_kernels
from corral.model.packed_weight import PackedWeight
from corral.sim.cost.measure import best_time_s

# SmolLM-135M: fused q|k|v, o, fused gate|up, down (out, in), and the LM head.
SHAPES = ((960, 576), (576, 576), (3072, 576), (576, 1536), (49152, 576))
BYTES_PER_SHAPE = 64_000_000  # each shape's weights repeated to about this much: out of cache


def kernel_rows(repeats: int) -> list[dict]:
    kernels = cpu_kernels()
    if kernels is None or not kernels.packed_weights_supported():
        raise SystemExit("this build of the CPU kernels does not read packed weights")
    rows_out = []
    for out_features, in_features in SHAPES:
        count = max(1, BYTES_PER_SHAPE // (out_features * in_features * 2))
        plain = [torch.randn(out_features, in_features).to(torch.bfloat16) for _ in range(count)]
        packed = [PackedWeight.pack(w).data for w in plain]
        for num_rows in (1, 32):
            x = torch.randn(num_rows, in_features).to(torch.bfloat16)
            seconds = {"plain": float("inf"), "packed": float("inf")}
            for _ in range(3):  # alternate layouts so drift hits both
                for name, weights in (("plain", plain), ("packed", packed)):

                    def run(weights=weights, x=x) -> None:
                        for w in weights:
                            kernels.few_row_linear(x, w, None)

                    seconds[name] = min(seconds[name], best_time_s(run, repeats))
            weight_bytes = count * out_features * in_features * 2
            flops = 2 * num_rows * count * out_features * in_features
            row = {"shape": [out_features, in_features], "rows": num_rows}
            for name, s in seconds.items():
                row[f"{name}_gbs"] = weight_bytes / s / 1e9
                row[f"{name}_gflops"] = flops / s / 1e9
            row["speedup"] = seconds["plain"] / seconds["packed"]
            rows_out.append(row)
            print(
                f"{out_features}x{in_features} rows {num_rows}: plain {row['plain_gbs']:.1f} GB/s "
                f"{row['plain_gflops']:.0f} GFLOP/s, packed {row['packed_gbs']:.1f} GB/s "
                f"{row['packed_gflops']:.0f} GFLOP/s ({row['speedup']:.2f}x)",
                flush=True,
            )
    return rows_out


def single_stream(tokens: int, rounds: int, alternations: int) -> list[dict]:
    results = []
    for quantization in ("none", "int8"):
        best = {"plain": float("inf"), "packed": float("inf")}
        for _ in range(alternations):
            for name, flag in (("plain", "0"), ("packed", "1")):
                os.environ["CORRAL_PACK_WEIGHTS"] = flag
                best[name] = min(best[name], ms_per_token(2, tokens, rounds, quantization))
        os.environ.pop("CORRAL_PACK_WEIGHTS", None)
        row = {
            "quantization": quantization,
            "plain_ms_per_token": best["plain"],
            "packed_ms_per_token": best["packed"],
            "speedup": best["plain"] / best["packed"],
        }
        results.append(row)
        print(
            f"single stream, {quantization}: plain {best['plain']:.2f} ms/token, packed "
            f"{best['packed']:.2f} ms/token ({row['speedup']:.2f}x)",
            flush=True,
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--alternations", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    read_gbs = read_bandwidth_gbs()
    print(f"read bandwidth (torch float32 sum, 269 MB): {read_gbs:.1f} GB/s", flush=True)
    report = {
        "started": started,
        "machine": cpu_facts(),
        "threads": 2,
        "load_average": os.getloadavg(),
        "read_bandwidth_gbs": read_gbs,
        "kernel": kernel_rows(args.repeats),
        "single_stream": single_stream(args.tokens, args.rounds, args.alternations),
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
