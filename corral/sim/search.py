"""Capacity planning: the cheapest deployment that meets the SLOs (in the spirit of Vidur-Search).

For every (hardware, tensor-parallel size) in the menu that can hold the model, a binary search
over the menu's instance counts finds the fewest instances whose simulated SLO attainment
(requests meeting every SLO bound / all requests) reaches the target; attainment is assumed not
to fall as instances are added. The cheapest of those minima wins. Every simulated point is
kept for the frontier: the points no other point beats on both cost and attainment.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from corral.core.slo_target import SLO
from corral.sim.api import simulate
from corral.sim.cluster import RequestHook
from corral.sim.cost.hardware import load_hardware
from corral.sim.deployment import DeploymentOptions
from corral.workloads.spec import Workload


@dataclass(frozen=True, slots=True)
class SearchPoint:
    hardware: str
    tensor_parallel_size: int
    num_instances: int
    cost_per_hour: float
    attainment: float
    meets_slo: bool
    ttft_p99_ms: float | None
    tpot_p99_ms: float | None
    throughput_rps: float
    wall_time_s: float


@dataclass(frozen=True, slots=True)
class SearchResult:
    points: list[SearchPoint]
    best: SearchPoint | None
    infeasible: dict[str, str]  # "hardware/tp" -> why it was skipped

    @property
    def frontier(self) -> list[SearchPoint]:
        """Points not dominated on (lower cost, higher attainment), by cost."""
        ordered = sorted(self.points, key=lambda p: (p.cost_per_hour, -p.attainment))
        frontier: list[SearchPoint] = []
        for point in ordered:
            if not frontier or point.attainment > frontier[-1].attainment:
                frontier.append(point)
        return frontier

    def to_dict(self) -> dict:
        return {
            "points": [asdict(p) for p in self.points],
            "best": asdict(self.best) if self.best else None,
            "frontier": [asdict(p) for p in self.frontier],
            "infeasible": self.infeasible,
        }


def _evaluate(
    workload: Workload,
    base: DeploymentOptions,
    slo: SLO,
    target: float,
    hardware: str,
    tp: int,
    num_instances: int,
    request_hook: RequestHook | None = None,
) -> SearchPoint:
    options = base.with_changes(
        hardware=hardware, tensor_parallel_size=tp, num_instances=num_instances
    )
    report = simulate(workload, options, slo, request_hook)
    summary = report.summary
    attainment = (summary.num_slo_met or 0) / len(workload)
    price = options.price_per_device_hour
    if price is None:
        price = load_hardware(hardware).price_per_hour or 0.0
    return SearchPoint(
        hardware=hardware,
        tensor_parallel_size=tp,
        num_instances=num_instances,
        cost_per_hour=num_instances * tp * price,
        attainment=attainment,
        meets_slo=attainment >= target,
        ttft_p99_ms=summary.ttft.p99_ms,
        tpot_p99_ms=summary.tpot.p99_ms,
        throughput_rps=summary.request_throughput,
        wall_time_s=report.wall_time_s,
    )


def search(
    workload: Workload,
    base: DeploymentOptions,
    slo: SLO,
    *,
    hardware_menu: Sequence[str],
    tp_menu: Sequence[int],
    instance_menu: Sequence[int],
    target_attainment: float = 0.9,
    progress: Callable[[SearchPoint], None] | None = None,
    request_hook: RequestHook | None = None,
) -> SearchResult:
    """Simulate the menu (binary search per hardware and tp) and pick the cheapest that meets
    the SLOs at the target attainment."""
    if slo.is_empty:
        raise ValueError("search needs at least one SLO bound (--slo ttft_ms=...,tpot_ms=...)")
    if not 0 < target_attainment <= 1:
        raise ValueError(f"target attainment must be in (0, 1], got {target_attainment}")
    counts = sorted(set(instance_menu))
    if not counts or counts[0] < 1:
        raise ValueError(f"instance counts must be >= 1, got {list(instance_menu)}")
    points: list[SearchPoint] = []
    infeasible: dict[str, str] = {}
    for hardware in hardware_menu:
        for tp in tp_menu:
            low, high = 0, len(counts) - 1
            while low <= high:
                middle = (low + high) // 2
                try:
                    point = _evaluate(
                        workload,
                        base,
                        slo,
                        target_attainment,
                        hardware,
                        tp,
                        counts[middle],
                        request_hook,
                    )
                except ValueError as error:
                    infeasible[f"{hardware}/tp{tp}"] = str(error)
                    break
                points.append(point)
                if progress is not None:
                    progress(point)
                if point.meets_slo:
                    high = middle - 1
                else:
                    low = middle + 1
    meeting = [p for p in points if p.meets_slo]
    best = min(meeting, key=lambda p: (p.cost_per_hour, -p.attainment)) if meeting else None
    return SearchResult(points, best, infeasible)


def format_search(result: SearchResult, target: float) -> str:
    lines = [
        f"{'hardware':<10}{'tp':>3}{'inst':>6}{'$/hour':>9}{'attain':>8}{'p99 TTFT':>10}"
        f"{'p99 TPOT':>10}{'req/s':>8}  frontier"
    ]
    frontier = set(id(p) for p in result.frontier)
    for p in sorted(result.points, key=lambda p: (p.cost_per_hour, p.hardware)):
        ttft = "-" if p.ttft_p99_ms is None else f"{p.ttft_p99_ms:.0f}"
        tpot = "-" if p.tpot_p99_ms is None else f"{p.tpot_p99_ms:.1f}"
        mark = ("*" if id(p) in frontier else "") + (" meets" if p.meets_slo else "")
        lines.append(
            f"{p.hardware:<10}{p.tensor_parallel_size:>3}{p.num_instances:>6}"
            f"{p.cost_per_hour:>9.2f}{p.attainment:>8.1%}{ttft:>10}{tpot:>10}"
            f"{p.throughput_rps:>8.2f}  {mark}"
        )
    for key, why in result.infeasible.items():
        lines.append(f"skipped {key}: {why}")
    if result.best is None:
        lines.append(f"no configuration in the menu reaches {target:.0%} SLO attainment")
    else:
        b = result.best
        lines.append(
            f"cheapest meeting the SLOs at {target:.0%}: {b.num_instances} x {b.hardware} "
            f"tp{b.tensor_parallel_size}, {b.cost_per_hour:.2f} $/hour "
            f"(attainment {b.attainment:.1%})"
        )
    return "\n".join(lines)


def plot_search(result: SearchResult, target: float, path: str) -> None:
    """Cost per hour against SLO attainment; the frontier as a line, the choice as a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for hardware in sorted({p.hardware for p in result.points}):
        for tp in sorted({p.tensor_parallel_size for p in result.points}):
            group = [
                p for p in result.points if p.hardware == hardware and p.tensor_parallel_size == tp
            ]
            if group:
                axis.scatter(
                    [p.cost_per_hour for p in group],
                    [p.attainment * 100 for p in group],
                    label=f"{hardware} tp{tp}",
                    s=25,
                )
    frontier = result.frontier
    axis.step(
        [p.cost_per_hour for p in frontier],
        [p.attainment * 100 for p in frontier],
        where="post",
        color="black",
        linewidth=0.8,
        label="frontier",
    )
    axis.axhline(target * 100, color="grey", linestyle="--", linewidth=0.8)
    if result.best is not None:
        axis.scatter(
            [result.best.cost_per_hour],
            [result.best.attainment * 100],
            marker="*",
            s=250,
            color="gold",
            edgecolor="black",
            zorder=5,
            label="cheapest meeting SLO",
        )
    axis.set_xscale("log")
    axis.set_xlabel("cost ($/hour)")
    axis.set_ylabel("SLO attainment (%)")
    axis.legend(fontsize=7)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
