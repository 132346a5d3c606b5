"""`benchmarks/structured_output.py --simulate`: the simulator's constrained decoding beside the
engine's measured overhead, from the figures a run wrote (docs/figures/structured_output.json).

Per workload and batch size: the step time is a two-point linear profile of this engine's own
unconstrained decode (step(1) = us per token at batch 1, step(32) = 32 x us per token at batch
32, straight line between); the mask cost per row is the measured growth of the sampling stage
(constrained - unconstrained microseconds per step) divided by the batch size. `corral simulate`'s
engine (ClusterSimulator, the real scheduler) then decodes the batch's requests, all arriving at
once, each the mean measured output length, once plain and once with every request constrained
(compile time 0: the measured decode time excludes the first token), and the predicted overhead
per token is the ratio of the two decode times (first token to last) less 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from corral.config import SchedulerConfig
from corral.sim.cluster import ClusterSimulator
from corral.sim.config import ClusterSpec, InstanceSpec
from corral.sim.cost.profiled import ProfiledCostModel
from corral.sim.structured import StructuredSimConfig
from corral.workloads.spec import RequestSpec, Workload

PROMPT_TOKENS = 64


def _decode_s(result) -> float:
    first = max(record.token_times_s[0] for record in result.records)
    return max(record.token_times_s[-1] for record in result.records) - first


def simulated_overhead(
    us_per_token_1: float,
    us_per_token_n: float,
    n: int,
    batch: int,
    output_tokens: int,
    mask_us_per_row: float,
) -> float:
    """Predicted per-token overhead of constrained decoding at this batch size (see above)."""
    slope_us = (n * us_per_token_n - us_per_token_1) / (n - 1)
    cost = ProfiledCostModel(
        ["intercept", "tokens"], [(us_per_token_1 - slope_us) / 1e6, slope_us / 1e6]
    )
    length = max(1, round(output_tokens / batch))
    specs = [RequestSpec(f"r{i}", 0.0, PROMPT_TOKENS, length) for i in range(batch)]
    work = Workload("structured-output", specs, 4096)
    engine = InstanceSpec(
        cost_model=cost,
        num_blocks=batch * ((PROMPT_TOKENS + length) // 16 + 2),
        max_model_len=PROMPT_TOKENS + length + 16,
        scheduler=SchedulerConfig(max_num_seqs=batch),
    )
    masked = StructuredSimConfig(
        fraction=1.0, compile_cold_s=0.0, compile_cached_s=0.0, mask_s_per_row=mask_us_per_row / 1e6
    )
    plain = ClusterSimulator(ClusterSpec((engine,)), work).run()
    constrained = ClusterSimulator(ClusterSpec((engine,), structured=masked), work).run()
    return _decode_s(constrained) / _decode_s(plain) - 1


def simulate_from_figures(path: Path) -> list[dict[str, Any]]:
    """The comparison for every overhead row of a figures file; prints a table."""
    rows = json.loads(path.read_text())["overhead"]
    by_key = {(row["workload"], row["concurrency"]): row for row in rows}
    concurrencies = sorted({row["concurrency"] for row in rows})
    low, high = concurrencies[0], concurrencies[-1]
    print(
        "| workload | batch | mask us per row (measured sample stage) | simulated overhead per "
        "token | measured (median) |\n|---|---|---|---|---|"
    )
    out = []
    for row in rows:
        batch = row["concurrency"]
        stages = row["stages"]
        delta_us = stages["constrained"]["sample_us_per_step"]
        delta_us -= stages["unconstrained"]["sample_us_per_step"]
        first, last = by_key[(row["workload"], low)], by_key[(row["workload"], high)]
        predicted = simulated_overhead(
            first["unconstrained_us_per_token"],
            last["unconstrained_us_per_token"],
            high,
            batch,
            row["output_tokens"],
            delta_us / batch,
        )
        out.append(dict(workload=row["workload"], batch=batch, simulated=round(predicted, 4)))
        print(
            f"| {row['workload']} | {batch} | {delta_us / batch:.1f} | {predicted:+.1%} | "
            f"{row['overhead']:+.1%} |"
        )
    return out
