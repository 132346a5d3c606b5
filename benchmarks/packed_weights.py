"""Packed bf16 weights (corral/model/packed_weight.py) against the plain layout, same run: the
kernel's weight streaming (GB/s) and GFLOP/s at 1-32 rows (--rows; 2-8 rows are the
verification steps of speculative decoding and small batches), per SmolLM-135M shape out of
cache and per corral-demo shape in cache, beside the machine's read bandwidth; then
single-stream decode of the SmolLM-135M-shaped bf16 model (and int8 layers with a bf16 head)
with packing on and off, rounds alternating.

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

# Fused q|k|v, o, fused gate|up, down (out, in), and the LM head: SmolLM-135M's, each repeated
# to about BYTES_OUT_OF_CACHE (streamed from memory), and corral-demo's, once (in cache).
SMOLLM_SHAPES = ((960, 576), (576, 576), (3072, 576), (576, 1536), (49152, 576))
DEMO_SHAPES = ((512, 256), (256, 256), (1536, 256), (256, 768), (4096, 256))
BYTES_OUT_OF_CACHE = 64_000_000


def kernel_rows(repeats: int, row_counts: list[int]) -> list[dict]:
    kernels = cpu_kernels()
    if kernels is None or not kernels.packed_weights_supported():
        raise SystemExit("this build of the CPU kernels does not read packed weights")
    rows_out = []
    shapes = [(s, "smollm") for s in SMOLLM_SHAPES] + [(s, "demo") for s in DEMO_SHAPES]
    for (out_features, in_features), model in shapes:
        weight_bytes_each = out_features * in_features * 2
        count = max(1, BYTES_OUT_OF_CACHE // weight_bytes_each) if model == "smollm" else 1
        plain = [torch.randn(out_features, in_features).to(torch.bfloat16) for _ in range(count)]
        packed = [PackedWeight.pack(w).data for w in plain]
        for num_rows in row_counts:
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
            row = {"model": model, "shape": [out_features, in_features], "rows": num_rows}
            for name, s in seconds.items():
                row[f"{name}_gbs"] = weight_bytes / s / 1e9
                row[f"{name}_gflops"] = flops / s / 1e9
            row["speedup"] = seconds["plain"] / seconds["packed"]
            rows_out.append(row)
            print(
                f"{model} {out_features}x{in_features} rows {num_rows}: "
                f"plain {row['plain_gbs']:.1f} GB/s "
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
    parser.add_argument("--rows", default="1,2,3,5,8,32", help="row counts of the kernel table")
    parser.add_argument("--skip-single-stream", action="store_true")
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
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "kernel": kernel_rows(args.repeats, [int(r) for r in args.rows.split(",")]),
    }
    if not args.skip_single_stream:
        report["single_stream"] = single_stream(args.tokens, args.rounds, args.alternations)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
