"""The fidelity benchmark's workloads: a slice of the Azure conversation trace at a mean rate,
fresh token ids per run, and consecutive slices of a workload (benchmarks/sim_fidelity.py)."""

from __future__ import annotations

import argparse
import dataclasses
import zlib

from corral.workloads import ArrivalOptions, WorkloadOptions, build_workload


def workload_at(
    rate: float,
    args: argparse.Namespace,
    vocab_size: int,
    trace_offset: int | None = None,
    num_requests: int | None = None,
):
    """The first num_requests requests of the Azure conversation trace from trace_offset (default:
    --num-requests, --trace-offset), their gaps rescaled to a mean of `rate` requests/s."""
    num_requests = num_requests or args.num_requests
    base = WorkloadOptions(
        dataset="azure-conv",
        num_requests=num_requests,
        length_scale=args.length_scale,
        max_model_len=args.max_model_len,
        vocab_size=vocab_size,
        trace_offset=args.trace_offset if trace_offset is None else trace_offset,
        seed=args.seed,
    )
    span = build_workload(base).duration_s
    scale = (num_requests - 1) / rate / span
    options = WorkloadOptions(
        **{**_fields(base), "arrival": ArrivalOptions("trace", time_scale=scale)}
    )
    return build_workload(options), scale


def fresh_ids(workload, salt: int):
    """The same requests (lengths, arrivals) with other synthetic token ids, so that a repeat on
    a long-lived engine never hits the prefix cache of an earlier run (a fresh simulation
    would not)."""
    specs = [
        dataclasses.replace(spec, token_seed=zlib.crc32(f"{salt}:{spec.token_seed}".encode()))
        for spec in workload.specs
    ]
    return dataclasses.replace(workload, specs=specs)


def split_workload(workload, num_parts: int) -> list:
    """Consecutive slices of a workload, each rebased to start at 0."""
    specs, parts = workload.specs, []
    for index in range(num_parts):
        part = specs[index * len(specs) // num_parts : (index + 1) * len(specs) // num_parts]
        if part:
            start = part[0].arrival_time_s
            rebased = [
                dataclasses.replace(spec, arrival_time_s=spec.arrival_time_s - start)
                for spec in part
            ]
            parts.append(dataclasses.replace(workload, specs=rebased))
    return parts


def _fields(options: WorkloadOptions) -> dict:
    return {name: getattr(options, name) for name in options.__dataclass_fields__}
