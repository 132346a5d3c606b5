"""Shared parts of the scheduling-policy benchmarks (policies.py on the real engine,
policies_sim.py in simulation): the bursty Azure workload, length predictions, the policy
runs, and the report.

Predictions for the Azure trace, which has no prompt text:
- oracle: the true output length (the bound);
- gsm8k-error: the true length times exp(e), e drawn from the held-out log errors
  log(predicted / true) of the ranking predictor trained on GSM8K (our measured error);
- prompt-length: a ridge fit of log output length on log prompt length, on trace rows that are
  not replayed (the only feature the trace has).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field

import numpy as np

from corral.core.slo_target import SLO
from corral.predict import LENGTH_PREDICTORS, FeatureConfig
from corral.predict.dataset import gsm8k_samples, lengths_of, split
from corral.predict.metrics import kendall_tau
from corral.predict.regression import ridge
from corral.predict.units import WordUnit
from corral.workloads import ArrivalOptions, RequestSpec, Workload, WorkloadOptions, build_workload
from corral.workloads.metrics import MetricsSummary, RequestRecord, summarize


@dataclass(frozen=True, slots=True)
class PolicyRun:
    """One row of the comparison: a scheduling policy spec and where predictions come from."""

    label: str
    policy: str
    predictions: str | None = None  # oracle | gsm8k-error | prompt-length | None


# max_wait_s=120 is large next to these runs' latencies: it only guards against starvation; the
# 30 s row shows the trade between the mean and the tail.
RUNS = [
    PolicyRun("fcfs", "fcfs"),
    PolicyRun("sjf oracle", "sjf:max_wait_s=120", "oracle"),
    PolicyRun("sjf predicted", "sjf:max_wait_s=120", "gsm8k-error"),
    PolicyRun("sjf predicted 30s", "sjf:max_wait_s=30", "gsm8k-error"),
    PolicyRun("sjf prompt-length", "sjf:max_wait_s=120", "prompt-length"),
    PolicyRun("srpt predicted", "srpt:max_wait_s=120", "gsm8k-error"),
    PolicyRun("mlfq", "mlfq"),
    PolicyRun("mlfq no-preempt", "mlfq:preempt=false"),
    PolicyRun("priority", "priority"),
    PolicyRun("fair (vtc)", "fair"),
    PolicyRun("edf", "edf"),
]


def azure_workload(
    num_requests: int,
    rate: float,
    cv: float,
    length_scale: float,
    max_model_len: int,
    vocab_size: int,
    seed: int = 0,
    trace_offset: int = 0,
) -> Workload:
    """Azure conversation lengths (scaled), gamma arrivals, two clients and two priorities."""
    return build_workload(
        WorkloadOptions(
            dataset="azure-conv",
            num_requests=num_requests,
            seed=seed,
            arrival=ArrivalOptions("gamma", rate=rate, cv=cv),
            length_scale=length_scale,
            max_model_len=max_model_len,
            vocab_size=vocab_size,
            trace_offset=trace_offset,
            num_clients=2,
            num_priorities=2,
        )
    )


@functools.lru_cache(maxsize=4)
def gsm8k_log_errors(seed: int = 0) -> np.ndarray:
    """log(predicted / true) of the GSM8K ranking predictor on its held-out split."""
    train, held_out = split(gsm8k_samples(WordUnit(), "model"), 0.2, seed)
    predictor = LENGTH_PREDICTORS.get("ranking")(features=FeatureConfig(), seed=seed)
    predictor.fit([s.prompt for s in train], lengths_of(train))
    predicted = predictor.predict([s.prompt for s in held_out])
    return np.log(predicted) - np.log(np.maximum(lengths_of(held_out), 1))


def predictions_for(
    source: str, specs: list[RequestSpec], history: list[RequestSpec], seed: int = 0
) -> dict[str, int]:
    """Predicted output length per request id (history: other trace rows, for fitting)."""
    true = np.array([spec.num_output_tokens for spec in specs], dtype=float)
    if source == "oracle":
        predicted = true
    elif source == "gsm8k-error":
        errors = gsm8k_log_errors(seed)
        draws = np.random.default_rng(seed).choice(errors, size=len(specs))
        predicted = true * np.exp(draws)
    elif source == "prompt-length":
        x = np.log([[spec.num_prompt_tokens] for spec in history])
        y = np.log([spec.num_output_tokens for spec in history])
        weights, intercept = ridge(x, y, 1e-6)
        prompts = np.log([[spec.num_prompt_tokens] for spec in specs])
        predicted = np.exp(prompts @ weights + intercept)
    else:
        raise ValueError(f"unknown prediction source {source!r}")
    return {spec.request_id: max(1, round(p)) for spec, p in zip(specs, predicted)}


def prediction_tau(specs: list[RequestSpec], predicted: dict[str, int]) -> float:
    true = [spec.num_output_tokens for spec in specs]
    return kendall_tau([predicted[spec.request_id] for spec in specs], true)


def deadline_s(spec: RequestSpec, slo: SLO) -> float | None:
    """A request's end-to-end deadline implied by the TTFT and TPOT bounds (for edf)."""
    return slo.deadline_s(spec.num_output_tokens)


@dataclass
class RunResult:
    run: PolicyRun
    summary: MetricsSummary
    extra: dict[str, float] = field(default_factory=dict)


def summarize_run(
    run: PolicyRun, records: list[RequestRecord], slo: SLO, **extra: float
) -> RunResult:
    return RunResult(run, summarize(records, slo=slo), dict(extra))


def _row(result: RunResult) -> dict[str, float]:
    s = result.summary
    return {
        "mean": (s.e2e.mean_ms or math.nan) / 1e3,
        "p99": (s.e2e.p99_ms or math.nan) / 1e3,
        "ttft": (s.ttft.mean_ms or math.nan) / 1e3,
        "goodput": s.goodput or 0.0,
        "tok_s": s.output_throughput,
    }


def report(rounds: list[list[RunResult]], title: str) -> str:
    """The comparison table: latency and goodput, each against FCFS of the same round, and
    predicted SJF/SRPT's gap to oracle SJF; with several rounds, the median over rounds."""
    labels = [result.run.label for result in rounds[0]]
    cells: dict[str, dict[str, list[float]]] = {label: {} for label in labels}
    for results in rounds:
        rows = {result.run.label: _row(result) for result in results}
        base = next(_row(r) for r in results if r.run.policy == "fcfs")
        oracle = next((_row(r) for r in results if r.run.predictions == "oracle"), None)
        for result in results:
            row = rows[result.run.label]
            row["mean_vs"] = row["mean"] / base["mean"] - 1
            row["p99_vs"] = row["p99"] / base["p99"] - 1
            row["goodput_vs"] = (
                row["goodput"] / base["goodput"] - 1 if base["goodput"] else math.nan
            )
            is_length_aware = result.run.policy.startswith(("sjf", "srpt"))
            row["gap"] = (
                row["mean"] / oracle["mean"] - 1 if oracle and is_length_aware else math.nan
            )
            for key, value in row.items():
                cells[result.run.label].setdefault(key, []).append(value)
    lines = [
        title + (f" (median of {len(rounds)} rounds)" if len(rounds) > 1 else ""),
        f"{'policy':<20}{'mean e2e s':>11}{'vs fcfs':>9}{'p99 e2e s':>11}{'vs fcfs':>9}"
        f"{'mean ttft s':>12}{'goodput/s':>10}{'vs fcfs':>9}{'tok/s':>9}{'vs oracle':>10}",
    ]
    for label in labels:
        m = {key: float(np.median(values)) for key, values in cells[label].items()}
        gap = "-" if math.isnan(m["gap"]) else f"{m['gap']:+.1%}"
        lines.append(
            f"{label:<20}{m['mean']:>11.2f}{m['mean_vs']:>+9.1%}{m['p99']:>11.2f}"
            f"{m['p99_vs']:>+9.1%}{m['ttft']:>12.2f}{m['goodput']:>10.2f}"
            f"{m['goodput_vs']:>+9.1%}{m['tok_s']:>9.1f}{gap:>10}"
        )
    return "\n".join(lines)


def save_json(rounds: list[list[RunResult]], path: str, **context: object) -> None:
    payload = {
        "context": context,
        "rounds": [
            [
                {
                    "label": r.run.label,
                    "policy": r.run.policy,
                    "predictions": r.run.predictions,
                    "summary": r.summary.to_dict(),
                    **r.extra,
                }
                for r in results
            ]
            for results in rounds
        ],
    }
    with open(path, "w") as file:
        json.dump(payload, file, indent=2, default=float)
