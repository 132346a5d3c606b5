"""SimReport: the bench tool's metrics plus what only a simulator sees (per-instance busy time,
KV usage over time, cost, energy) and how fast the simulation ran."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from corral.core.slo_target import SLO
from corral.sim.autoscale import AutoscaleResult
from corral.sim.cluster import SimResult
from corral.sim.grammar_step import SimStructuredStats, merge_structured_stats
from corral.sim.instance import SimInstance
from corral.sim.lora import SimLoRAStats, format_lora_stats, merge_lora_stats
from corral.sim.spec import merge_spec_stats, spec_stats_dict
from corral.sim.structured_report import StructuredReport, format_structured_report
from corral.spec.stats import SpecDecodeStats
from corral.workloads.metrics import MetricsSummary, format_summary, summarize


@dataclass(frozen=True, slots=True)
class InstanceReport:
    index: int
    label: str
    role: str
    num_devices: int
    num_assigned: int
    num_steps: int
    num_batched_tokens: int
    busy_time_s: float
    utilization: float  # busy time / duration
    mean_kv_usage: float  # time-averaged over the duration
    max_kv_usage: float
    num_preemptions: int
    prefix_hit_rate: float | None  # cached / queried prompt tokens (excluding transferred KV)
    cost_usd: float | None
    energy_j: float | None
    kv_samples: list[tuple[float, float]]
    spec_decode: SpecDecodeStats | None = None  # speculative decoding counters (None: off)
    lora: SimLoRAStats | None = None  # multi-LoRA counters (None: off)
    structured: SimStructuredStats | None = None  # constrained decoding (None: off)
    # (time, waiting, running requests) at the kv_samples times.
    queue_samples: list[tuple[float, int, int]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class AutoscaleReport:
    """What autoscaling cost and did. Instance-seconds count each instance from its start
    decision (initial ones: time 0) to its removal or the last request's end (end_s);
    fixed_fleet_instance_seconds is max_replicas instances over the same [0, end_s]."""

    spec: str
    cold_start_s: float
    interval_s: float
    end_s: float
    instance_seconds: float
    fixed_fleet_instance_seconds: float
    max_replicas: int  # the most provisioned at once (starting + serving + draining)
    mean_replicas: float  # provisioned, time-averaged over [0, end_s]
    num_scale_ups: int
    num_scale_downs: int
    num_cold_starts: int
    num_returned: int  # draining instances put back into service
    timeline: list[tuple[float, int, int]]  # (time, provisioned, serving) after each change

    @classmethod
    def of(cls, result: AutoscaleResult) -> AutoscaleReport:
        spec = result.spec
        return cls(
            spec=spec.config.to_spec(),
            cold_start_s=spec.cold_start_s,
            interval_s=spec.interval_s,
            end_s=result.end_s,
            instance_seconds=result.instance_seconds,
            fixed_fleet_instance_seconds=spec.config.max_replicas * result.end_s,
            max_replicas=result.max_replicas,
            mean_replicas=result.mean_replicas,
            num_scale_ups=result.num_scale_ups,
            num_scale_downs=result.num_scale_downs,
            num_cold_starts=result.num_cold_starts,
            num_returned=result.num_returned,
            timeline=result.timeline,
        )


@dataclass(frozen=True, slots=True)
class SimReport:
    summary: MetricsSummary
    instances: list[InstanceReport]
    duration_s: float
    wall_time_s: float
    num_events: int
    cost_usd: float | None
    energy_kwh: float | None
    spec_decode: SpecDecodeStats | None = None  # summed over the instances (None: off)
    lora: SimLoRAStats | None = None  # summed over the instances (None: off)
    autoscale: AutoscaleReport | None = None  # None: not autoscaled
    structured: StructuredReport | None = None  # constrained decoding (None: off)

    @property
    def simulated_requests_per_wall_s(self) -> float:
        count = self.summary.num_completed + self.summary.num_failed
        return count / self.wall_time_s if self.wall_time_s > 0 else float("inf")

    def to_dict(self, *, with_kv_samples: bool = True) -> dict:
        """with_kv_samples=False drops the per-instance time series (KV and queue samples)."""
        document = asdict(self)
        document["simulated_requests_per_wall_s"] = self.simulated_requests_per_wall_s
        if not with_kv_samples:
            for instance in document["instances"]:
                instance.pop("kv_samples")
                instance.pop("queue_samples")
        # The counters and the derived rates (acceptance rate, mean accepted length).
        if self.spec_decode is not None:
            document["spec_decode"] = spec_stats_dict(self.spec_decode)
        for instance, row in zip(self.instances, document["instances"]):
            if instance.spec_decode is not None:
                row["spec_decode"] = spec_stats_dict(instance.spec_decode)
        return document


def _instance_report(
    instance: SimInstance, duration_s: float, active_s: float | None = None
) -> InstanceReport:
    """active_s: the time the instance existed (autoscaled), else it existed for duration_s;
    utilization, mean KV usage, cost and idle energy are over that time."""
    spec = instance.spec
    if active_s is not None:
        duration_s = active_s
    idle_s = max(0.0, duration_s - instance.busy_time_s)
    energy = None
    if spec.busy_power_w is not None and spec.idle_power_w is not None:
        energy = spec.num_devices * (
            spec.busy_power_w * instance.busy_time_s + spec.idle_power_w * idle_s
        )
    cost = None
    if spec.price_per_device_hour is not None:
        cost = spec.num_devices * spec.price_per_device_hour * duration_s / 3600.0
    kv = instance.kv
    queried = kv.stats.prefix_query_tokens
    hits = kv.stats.prefix_hit_tokens - kv.num_external_tokens
    return InstanceReport(
        index=instance.index,
        label=spec.label,
        role=spec.role,
        num_devices=spec.num_devices,
        num_assigned=instance.num_assigned,
        num_steps=instance.num_steps,
        num_batched_tokens=instance.num_batched_tokens,
        busy_time_s=instance.busy_time_s,
        utilization=instance.busy_time_s / duration_s if duration_s > 0 else 0.0,
        mean_kv_usage=instance.kv_usage_time_s / duration_s if duration_s > 0 else 0.0,
        max_kv_usage=instance.max_kv_usage,
        num_preemptions=instance.scheduler.num_preemptions,
        prefix_hit_rate=hits / queried if queried else None,
        cost_usd=cost,
        energy_j=energy,
        kv_samples=instance.kv_samples,
        spec_decode=instance.scheduler.stats().spec_decode
        if instance.scheduler.spec is not None
        else None,
        lora=_lora_stats(instance),
        structured=instance.structured_stats,
        queue_samples=instance.queue_samples,
    )


def _lora_stats(instance: SimInstance) -> SimLoRAStats | None:
    adapters, pricer = instance.scheduler.adapters, instance.executor.lora
    if adapters is None or pricer is None:
        return None
    return SimLoRAStats.of(adapters.stats(), pricer)


def build_report(result: SimResult, slo: SLO | None = None) -> SimReport:
    summary = summarize(result.records, slo=slo)
    duration_s = summary.duration_s
    autoscale = result.autoscale
    if autoscale is None:
        instances = [_instance_report(instance, duration_s) for instance in result.instances]
    else:
        instances = [
            _instance_report(instance, duration_s, stop - start)
            for instance, (start, stop) in zip(
                result.instances, autoscale.instance_lifetimes_s, strict=True
            )
        ]
    structured = None
    structured_stats = merge_structured_stats(i.structured for i in instances)
    if result.spec.structured is not None and structured_stats is not None:
        structured = StructuredReport.of(
            result.spec.structured, structured_stats, result.records, result.grammars
        )
    costs = [i.cost_usd for i in instances]
    energies = [i.energy_j for i in instances]
    return SimReport(
        summary=summary,
        instances=instances,
        duration_s=duration_s,
        wall_time_s=result.wall_time_s,
        num_events=result.num_events,
        cost_usd=sum(costs) if None not in costs else None,  # type: ignore[arg-type]
        energy_kwh=sum(energies) / 3.6e6 if None not in energies else None,  # type: ignore[arg-type]
        spec_decode=merge_spec_stats(i.spec_decode for i in instances),
        lora=merge_lora_stats(i.lora for i in instances),
        autoscale=AutoscaleReport.of(autoscale) if autoscale is not None else None,
        structured=structured,
    )


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_report(report: SimReport, title: str = "corral simulate", max_rows: int = 16) -> str:
    lines = [format_summary(report.summary, title), ""]
    lines.append(
        f"{'inst':>5} {'label':<16}{'role':<8}{'reqs':>7}{'steps':>9}{'util':>7}"
        f"{'kv mean':>9}{'kv max':>8}{'preempt':>9}{'hit rate':>9}"
    )
    shown = report.instances
    if len(shown) > max_rows:
        shown = shown[: max_rows // 2] + shown[-max_rows // 2 :]
    for i, instance in enumerate(shown):
        if len(report.instances) > max_rows and i == max_rows // 2:
            lines.append(f"{'...':>5} ({len(report.instances) - max_rows} more)")
        lines.append(
            f"{instance.index:>5} {instance.label[:15]:<16}{instance.role:<8}"
            f"{instance.num_assigned:>7}{instance.num_steps:>9}{instance.utilization:>7.1%}"
            f"{instance.mean_kv_usage:>9.1%}{instance.max_kv_usage:>8.1%}"
            f"{instance.num_preemptions:>9}{_fmt(instance.prefix_hit_rate, '>9.1%'):>9}"
        )
    utilizations = [i.utilization for i in report.instances]
    lines.append(
        f"utilization min/mean/max: {min(utilizations):.1%} / "
        f"{sum(utilizations) / len(utilizations):.1%} / {max(utilizations):.1%}"
    )
    spec = report.spec_decode
    if spec is not None:
        mean_k = (
            spec.num_planned_tokens / spec.num_planned_requests if spec.num_planned_requests else 0
        )
        lines.append(
            f"speculative decoding: {spec.num_drafts} verification rounds, acceptance "
            f"{spec.acceptance_rate:.1%} ({spec.num_accepted_tokens} of {spec.num_draft_tokens} "
            f"draft tokens), mean accepted length {spec.mean_accepted_length:.2f} tokens per "
            f"round, mean K planned {mean_k:.2f} ({spec.num_planned_requests} request-steps)"
        )
    if report.lora is not None:
        busy_time_s = sum(i.busy_time_s for i in report.instances)
        lines.append(format_lora_stats(report.lora, busy_time_s))
    if report.structured is not None:
        busy_time_s = sum(i.busy_time_s for i in report.instances)
        lines.extend(format_structured_report(report.structured, busy_time_s))
    if report.autoscale is not None:
        lines.extend(format_autoscale(report.autoscale))
    lines.append(
        f"cost: {_fmt(report.cost_usd, '.2f')} USD   energy: {_fmt(report.energy_kwh, '.3f')} kWh"
    )
    lines.append(
        f"simulated {report.summary.num_completed} requests ({report.num_events} events) in "
        f"{report.wall_time_s:.2f} s wall: {report.simulated_requests_per_wall_s:.0f} requests "
        f"per wall-second"
    )
    return "\n".join(lines)


def format_autoscale(report: AutoscaleReport) -> list[str]:
    fixed_s = report.fixed_fleet_instance_seconds
    saved = f", {1 - report.instance_seconds / fixed_s:.1%} less" if fixed_s > 0 else ""
    return [
        f"autoscaling {report.spec}, cold start {report.cold_start_s:.2f} s, decisions every "
        f"{report.interval_s:g} s",
        f"  replicas: max {report.max_replicas}, mean {report.mean_replicas:.2f} over "
        f"{report.end_s:.1f} s; {report.num_scale_ups} scale-ups, {report.num_scale_downs} "
        f"scale-downs, {report.num_cold_starts} cold starts, {report.num_returned} returned "
        "from draining",
        f"  instance-seconds: {report.instance_seconds:.1f} (a fixed fleet of max_replicas: "
        f"{fixed_s:.1f}{saved})",
    ]
