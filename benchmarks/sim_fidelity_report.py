"""The fidelity benchmark's comparisons: simulation against real runs per metric, the profile's
error on a run's own steps, and the engine-side TTFT from a step log
(benchmarks/sim_fidelity.py)."""

from __future__ import annotations

from corral.sim.cost.profiled import ProfiledCostModel
from corral.workloads.metrics import MetricsSummary

METRICS = {
    "mean TTFT (ms)": lambda s: s.ttft.mean_ms,
    "p99 TTFT (ms)": lambda s: s.ttft.p99_ms,
    "mean TPOT (ms)": lambda s: s.tpot.mean_ms,
    "p99 TPOT (ms)": lambda s: s.tpot.p99_ms,
    "mean E2E (ms)": lambda s: s.e2e.mean_ms,
    "output tok/s": lambda s: s.output_throughput,
    "requests/s": lambda s: s.request_throughput,
}


def step_level_error(profile: ProfiledCostModel, shapes: list, times: list[float]) -> dict:
    """The profiled model's error on the replay's own steps (shape -> measured time), overall
    and for decode-only steps and steps with prefill tokens; keeps the raw steps too."""
    pairs = [(shape, t) for shape, t in zip(shapes, times) if shape is not None and t > 0]

    def summary(group: list) -> dict:
        errors = [profile.step_time_s(shape) / t - 1 for shape, t in group]
        if not errors:
            return {"num_steps": 0}
        predicted = sum(profile.step_time_s(shape) for shape, _ in group)
        return {
            "num_steps": len(errors),
            "mean_rel_error": sum(errors) / len(errors),
            "mean_abs_rel_error": sum(map(abs, errors)) / len(errors),
            "total_time_ratio": predicted / sum(t for _, t in group),
        }

    result = summary(pairs)
    result["decode_only"] = summary([p for p in pairs if p[0].num_prefill_tokens == 0])
    result["with_prefill"] = summary([p for p in pairs if p[0].num_prefill_tokens > 0])
    result["steps"] = [[list(shape), t] for shape, t in pairs]
    return result


def compare(reals: list[MetricsSummary], sim: MetricsSummary) -> dict:
    """Each metric: the mean over the real runs, their range, the simulation, its error."""
    rows = {}
    for name, get in METRICS.items():
        values = [get(real) for real in reals]
        r, s = sum(values) / len(values), get(sim)
        rows[name] = {
            "real": r,
            "real_min": min(values),
            "real_max": max(values),
            "sim": s,
            "error": (s - r) / r if r else None,
        }
    return rows


def engine_side_ttft(requests: list[dict], window: tuple[float, float]) -> dict:
    """From the step log, the engine's own view of the requests added within window: frontend
    arrival -> added to the core -> first token out of a step."""
    inside = [r for r in requests if window[0] <= r["add"] <= window[1]]
    if not inside:
        return {"num_requests": 0}
    count = len(inside)
    return {
        "num_requests": count,
        "mean_ttft_ms": 1e3 * sum(r["first"] - r["arrival"] for r in inside) / count,
        "mean_arrival_to_add_ms": 1e3 * sum(r["add"] - r["arrival"] for r in inside) / count,
    }


def print_table(rows: dict) -> None:
    print(f"{'metric':<18}{'real mean':>10}{'real range':>18}{'sim':>10}{'error':>9}")
    for name, row in rows.items():
        error = "-" if row["error"] is None else f"{row['error']:+.1%}"
        spread = f"{row['real_min']:.1f}-{row['real_max']:.1f}"
        print(f"{name:<18}{row['real']:>10.1f}{spread:>18}{row['sim']:>10.1f}{error:>9}")
