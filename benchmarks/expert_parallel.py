"""Expert parallelism on CPU: the decode step of a small random Mixtral-shaped model in one
process against two processes, expert-parallel (each rank holds 4 of the 8 experts per layer) and
plain tensor-parallel (each rank holds half of every expert's columns), at batch 1 and 32.

Model: benchmarks/moe.py's (hidden 512, 8 query / 2 KV heads, 4 layers, vocabulary 8192, 8
SwiGLU experts of intermediate 1024 per layer, top-2; random weights built into a temporary
directory), bfloat16 unless --dtype says otherwise. Workload and timing: moe.py's
decode_step_times (batch requests of 32 random prompt tokens, one prefill step, warm-up decode
steps, then `steps` decode steps timed one by one). A tensor-parallel engine is one per process,
so each round starts each configuration's engine in turn (the order alternates between rounds),
measures every batch size and shuts it down; the median over all rounds' steps is the step time.
With 2 processes, rank 0's time inside its all-reduces during decode steps is recorded too (per
step, mean over the rounds): the transfer plus any wait for the other rank to arrive.

Threads: the machine's cores are shared out, not added: one process runs on --num-threads torch
threads (default: all cores), and each of the 2 ranks on half of them (threads_per_rank).

    .venv/bin/python benchmarks/expert_parallel.py            # a few minutes on 2 cores
    .venv/bin/python benchmarks/expert_parallel.py --quick    # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks.common import machine  # noqa: E402
from benchmarks.moe import (  # noqa: E402
    EXPERT_INTERMEDIATE,
    PROMPT_LEN,
    QUICK_SHAPE,
    SHAPE,
    build_models,
    decode_step_times,
)
from corral import LLM  # noqa: E402
from corral.model.arch import ModelArch  # noqa: E402
from corral.model.cpu_features import cpu_flags  # noqa: E402
from corral.model.expert_parallel import attach_all_reduce  # noqa: E402
from corral.model.rank_split import split  # noqa: E402

# name -> LLM keywords (besides the model's and the pool's)
CONFIGS = {
    "1 process": dict(tensor_parallel_size=1),
    "2 processes, expert-parallel": dict(tensor_parallel_size=2, enable_expert_parallel=True),
    "2 processes, tensor-parallel": dict(tensor_parallel_size=2),
}
BASELINE = "1 process"


def rank_shares(load: dict[int, list[int]], size: int) -> list[float]:
    """The fraction of the (token, expert) assignments that each of size expert-parallel ranks
    ran, over every MoE layer (rank r holds the experts split gives it)."""
    totals = [0] * size
    for counts in load.values():
        for rank in range(size):
            first, count = split(len(counts), size, rank)
            totals[rank] += sum(counts[first : first + count])
    return [round(total / max(1, sum(totals)), 3) for total in totals]


class TimedAllReduce:
    """Rank 0's all-reduce, recording (rows, seconds) of each call."""

    def __init__(self, all_reduce) -> None:
        self.all_reduce = all_reduce
        self.calls: list[tuple[int, float]] = []

    def __call__(self, tensor: torch.Tensor) -> None:
        start = time.perf_counter()
        self.all_reduce(tensor)
        self.calls.append((tensor.shape[0], time.perf_counter() - start))

    def ms_per_decode_step(self, batch: int, calls_per_step: int) -> float:
        """Mean ms per step of the calls made by decode steps of batch rows (then forgets)."""
        decode = [seconds for rows, seconds in self.calls if rows == batch]
        self.calls.clear()
        return sum(decode) * 1e3 / max(1, len(decode) // calls_per_step)


def run(
    shape: dict[str, Any],
    expert_intermediate: int,
    batches: tuple[int, ...],
    steps: int,
    warmup: int,
    dtype: str,
    rounds: int,
    num_threads: int,
) -> dict[str, Any]:
    """Step times of every configuration at every batch size, rounds alternating the order."""
    samples: dict[tuple[str, int], list[float]] = {}
    all_reduce_ms: dict[tuple[str, int], list[float]] = {}
    shares: dict[int, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="corral-ep-bench-") as tmp:
        model_dir, _ = build_models(Path(tmp), shape, expert_intermediate, dtype)
        arch = ModelArch.from_dir(model_dir)
        for round_index in range(rounds):
            names = list(CONFIGS) if round_index % 2 == 0 else list(reversed(CONFIGS))
            for name in names:
                llm = LLM(
                    model=str(model_dir),
                    dtype=dtype,
                    num_threads=num_threads,
                    max_num_seqs=max(batches),
                    max_model_len=PROMPT_LEN + warmup + steps + 16,
                    num_blocks=max(batches) * 8 + 8,
                    block_size=16,
                    **CONFIGS[name],
                )
                model = llm.engine.executor.model
                timer = None
                if CONFIGS[name]["tensor_parallel_size"] > 1:
                    timer = TimedAllReduce(model.group.all_reduce)
                    attach_all_reduce(model.shard, timer)
                try:
                    for batch in batches:
                        model.reset_expert_load()
                        samples.setdefault((name, batch), []).extend(
                            decode_step_times(llm, batch, steps, warmup, seed=round_index)
                        )
                        if timer is not None:  # o and the MoE block in every layer
                            per_step = timer.ms_per_decode_step(batch, 2 * arch.num_layers)
                            all_reduce_ms.setdefault((name, batch), []).append(per_step)
                        if name == BASELINE and round_index == 0:
                            shares[batch] = rank_shares(model.expert_load(), 2)
                finally:
                    llm.shutdown()
    rows = []
    for batch in batches:
        baseline_ms = statistics.median(samples[(BASELINE, batch)]) * 1e3
        for name in CONFIGS:
            step_ms = statistics.median(samples[(name, batch)]) * 1e3
            size = CONFIGS[name]["tensor_parallel_size"]
            rows.append(
                dict(
                    config=name,
                    batch=batch,
                    processes=size,
                    torch_threads_per_process=max(1, num_threads // size),
                    step_ms=round(step_ms, 3),
                    output_tok_s=round(batch / step_ms * 1e3, 1),
                    speedup_vs_one_process=round(baseline_ms / step_ms, 3),
                    rank0_all_reduce_ms_per_step=round(
                        statistics.mean(all_reduce_ms.get((name, batch), [0.0])), 3
                    ),
                )
            )
    return dict(
        description="decode step time of a Mixtral-shaped model (8 experts, top-2): one "
        "process vs 2 processes expert-parallel (4 whole experts per rank) and tensor-parallel "
        "(half of every expert per rank); batch requests of 32 prompt tokens, greedy",
        dtype=dtype,
        shape=dict(shape, expert_intermediate=expert_intermediate, num_experts=arch.num_experts),
        params=dict(total=arch.num_params(), active=arch.num_active_params()),
        steps_per_round=steps,
        rounds=rounds,
        rows=rows,
        expert_parallel_rank_shares={str(batch): share for batch, share in shares.items()},
        machine=machine(
            torch=torch.__version__,
            total_torch_threads=num_threads,
            simd_flags=sorted(f for f in cpu_flags() if f.startswith(("avx512", "amx"))),
        ),
    )


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| configuration | batch | threads per process | decode step (ms) | output tok/s | "
        "speed-up vs 1 process | rank 0 in all-reduce (ms/step) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['config']} | {row['batch']} | {row['torch_threads_per_process']} | "
            f"{row['step_ms']:.2f} | {row['output_tok_s']:.1f} | "
            f"{row['speedup_vs_one_process']:.2f}x | {row['rank0_all_reduce_ms_per_step']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--num-threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--quick", action="store_true", help="a tiny model, 2 steps (smoke test)")
    parser.add_argument(
        "--json-out", default=str(REPO / "docs" / "figures" / "expert_parallel.json")
    )
    args = parser.parse_args(argv)
    if args.quick:
        options = dict(shape=QUICK_SHAPE, expert_intermediate=32, batches=(1, 4), steps=2)
        options |= dict(warmup=1, rounds=1)
    else:
        options = dict(shape=SHAPE, expert_intermediate=EXPERT_INTERMEDIATE, batches=(1, 32))
        options |= dict(steps=args.steps, warmup=5, rounds=args.rounds)
    result = run(**options, dtype=args.dtype, num_threads=args.num_threads)
    Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    print(
        "\nexpert-parallel rank shares of the assignments:", result["expert_parallel_rank_shares"]
    )
    return result


if __name__ == "__main__":
    main()
