"""The decode GEMM: corral's few-row linear kernel against torch's F.linear at the batch sizes of
decode steps (M = rows = running requests), on the weight shapes of the SmolLM-135M-shaped
reference model, in GFLOP/s, same process, alternating calls. bf16 weights are timed in the
checkpoint's layout (the dot-product kernel) and, where the build reads them, packed as bf16
models load with on this CPU (corral/model/packed_weight.py): AMX tiles where the CPU has AMX,
else panels (the broadcast-form kernel) where it lacks native bf16 dot products.
With bf16, the same weights quantized to int8 and packed for the int8 panel kernel (what
`--quantization int8` loads; x quantized to int16 per row, integer products) are timed too,
against the same bf16 F.linear.

Each figure is the best of --trials timed trials: on a shared machine the best trial is the one
least disturbed, and both contenders get the same treatment. With one thread the clock is the
thread's CPU time (time descheduled does not count), with several it is wall time.

    .venv/bin/python benchmarks/decode_gemm.py --json docs/figures/decode_gemm.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch
import torch.nn.functional as F

from corral.config import CPU_ISA_CAPS
from corral.model.cpu_features import apply_cpu_isa, cpu_flags, cpu_isa
from corral.model.kernels import cpu_kernels
from corral.model.packed_weight import PackedWeight, build_layout
from corral.model.quantization import quantize_int8
from corral.sim.cost.measure import best_time_s

# (out, in) of q|k|v, o, gate|up, down and the LM head of the reference model (hidden 576, 9
# heads of 64, 3 KV heads, MLP 1536, vocabulary 49,152).
SHAPES = {"qkv": (960, 576), "o": (576, 576), "gate_up": (3072, 576), "down": (576, 1536)}
LM_HEAD = (49152, 576)


def best_seconds(fn, repeats: int, trials: int, clock=time.perf_counter) -> float:
    """Seconds per call: the best of `trials` timed batches of `repeats` calls."""

    def batch() -> None:
        for _ in range(repeats):
            fn()

    return best_time_s(batch, trials, clock) / repeats


def measure(rows: int, dtype: torch.dtype, threads: int, trials: int) -> dict:
    """GFLOP/s of one decoder layer's four linears (their summed time) at `rows` rows."""
    torch.set_num_threads(threads)
    kernels = cpu_kernels()
    assert kernels is not None
    # One thread: the calling thread's CPU time, which time spent descheduled by other jobs on a
    # shared machine does not inflate; several threads: wall time.
    clock = time.thread_time if threads == 1 else time.perf_counter
    kernel_s = torch_s = int8_s = 0.0
    layout = build_layout() if dtype == torch.bfloat16 else None
    packs = layout is not None
    # Tiles without AMX run in either form of the dot-product kernel (cpu_dot_tiles.cpp): both
    # are timed, and the engine keeps the faster (linear_dispatch.choose_tile_form).
    forms = {layout: None}
    if layout == "tiles" and not kernels.amx_tiles_supported():
        forms = {"tiles, dot form": 0, "tiles, FMA form": 1}
    packed_s = dict.fromkeys(forms, 0.0)
    int8 = dtype == torch.bfloat16 and bool(kernels.int8_panels_supported())
    flops = 0
    for out_features, in_features in SHAPES.values():
        weight = torch.randn(out_features, in_features, dtype=dtype)
        x = torch.randn(rows, in_features, dtype=dtype)
        repeats = max(3, int(2e8 / (2 * rows * out_features * in_features)))
        repeats = min(repeats, 200)
        kernel_s += best_seconds(
            lambda w=weight, x=x: kernels.few_row_linear(x, w, None), repeats, trials, clock
        )
        torch_s += best_seconds(lambda w=weight, x=x: F.linear(x, w), repeats, trials, clock)
        if packs:
            packed = PackedWeight.pack(weight, layout).data
            for label, form in forms.items():
                if form is not None:
                    kernels.set_dot_tiles_form(form)
                packed_s[label] += best_seconds(
                    lambda w=packed, x=x: kernels.few_row_linear(x, w, None),
                    repeats,
                    trials,
                    clock,
                )
        if int8:
            q = quantize_int8(weight).packed()
            int8_s += best_seconds(
                lambda q=q, x=x: kernels.int8_linear(x, q.qweight, q.scales, None),
                repeats,
                trials,
                clock,
            )
        flops += 2 * rows * out_features * in_features
    return {
        "rows": rows,
        "dtype": str(dtype).removeprefix("torch."),
        "threads": threads,
        "kernel_gflops": flops / kernel_s / 1e9,
        "torch_gflops": flops / torch_s / 1e9,
        "kernel_over_torch": torch_s / kernel_s,
        "packed_layout": min(packed_s, key=packed_s.get) if packs else None,
        "packed_gflops": flops / min(packed_s.values()) / 1e9 if packs else None,
        "packed_over_torch": torch_s / min(packed_s.values()) if packs else None,
        "packed_gflops_by_layout": {k: flops / v / 1e9 for k, v in packed_s.items()}
        if packs
        else {},
        "int8_panel_gflops": flops / int8_s / 1e9 if int8 else None,
        "int8_panel_over_torch": torch_s / int8_s if int8 else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="1,2,4,8,16,32,64,128")
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--threads", default=f"1,{os.cpu_count()}")
    parser.add_argument("--trials", type=int, default=7)
    parser.add_argument("--json", default=None)
    parser.add_argument(
        "--cpu-isa",
        choices=CPU_ISA_CAPS,
        default=None,
        help="cap the instruction sets (corral/model/cpu_features.py): avx512_bf16 stands in "
        "for a CPU without AMX, avx2 for one without AVX-512",
    )
    args = parser.parse_args()
    apply_cpu_isa(args.cpu_isa)  # before the kernels are built and oneDNN's first matmul
    flags = cpu_flags()
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "simd": sorted(f for f in flags if f.startswith(("avx", "amx", "fma"))),
        "torch": torch.__version__,
        "cpu_isa_cap": cpu_isa(),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "load_average": os.getloadavg(),
    }
    print(machine)
    print(
        "| dtype | threads | rows | kernel GFLOP/s | F.linear GFLOP/s | kernel / F.linear | "
        "packed (layout) GFLOP/s | packed / F.linear | int8 panels GFLOP/s | "
        "int8 panels / F.linear |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    results = []
    for dtype_name in args.dtypes.split(","):
        for threads in [int(t) for t in args.threads.split(",")]:
            for rows in [int(r) for r in args.rows.split(",")]:
                row = measure(rows, getattr(torch, dtype_name), threads, args.trials)
                results.append(row)
                packed = (
                    "; ".join(
                        f"{gflops:.1f} ({label})"
                        for label, gflops in row["packed_gflops_by_layout"].items()
                    )
                    + f" | {row['packed_over_torch']:.2f}"
                    if row["packed_gflops"] is not None
                    else "- | -"
                )
                int8 = (
                    f"{row['int8_panel_gflops']:.1f} | {row['int8_panel_over_torch']:.2f}"
                    if row["int8_panel_gflops"] is not None
                    else "- | -"
                )
                print(
                    f"| {row['dtype']} | {threads} | {rows} | {row['kernel_gflops']:.1f} | "
                    f"{row['torch_gflops']:.1f} | {row['kernel_over_torch']:.2f} | {packed} | "
                    f"{int8} |",
                    flush=True,
                )
    machine["load_average_after"] = os.getloadavg()
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"machine": machine, "results": results}, handle, indent=1)


if __name__ == "__main__":
    main()
