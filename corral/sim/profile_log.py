"""Fit the `profiled` cost model to a real server's step log (corral.engine.step_log).

A profile taken in a tight loop (corral.sim.profile) times each step on a machine doing nothing
else. A served engine's steps run while the HTTP frontend streams tokens and the clients send
requests on the same machine, after idle gaps that leave caches cold; on a small shared CPU they
are measurably slower (docs/simulator.md). Fitting to the server's own step log measures the
steps in that regime: each step's sample time is its duration plus the loop's overhead before
the next step (receiving requests, sending outputs), which a simulated instance must also charge.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from corral.core.batch_shape import BatchShape
from corral.engine.step_log import read_step_log
from corral.sim.cost.profiled import ProfiledCostModel


def step_samples(steps: Sequence[dict]) -> list[tuple[BatchShape, float]]:
    """(shape, seconds) per logged step: the step's own duration plus the loop's overhead up to
    the next step when the engine stayed busy (its gap); for a step after which the engine went
    idle, the median of those overheads."""
    busy_gaps = [step["gap"] for step in steps[1:] if step["busy"] and step["gap"] is not None]
    typical_gap = statistics.median(busy_gaps) if busy_gaps else 0.0
    samples = []
    for index, step in enumerate(steps):
        following = steps[index + 1] if index + 1 < len(steps) else None
        if following is not None and following["busy"] and following["gap"] is not None:
            overhead = following["gap"]
        else:
            overhead = typical_gap
        samples.append((BatchShape(*step["b"]), step["s"] + overhead))
    return samples


def profile_from_step_logs(
    paths: Sequence[str | Path],
    fit_target: str = "mean",
    windows: Sequence[tuple[float, float]] | None = None,
) -> ProfiledCostModel:
    """Fit a profile to the steps of one or more step logs (of one engine configuration),
    optionally only those that started within one of windows ((start, end) time.monotonic()
    seconds, ends included); fit_target: see ProfiledCostModel.fit."""
    if not paths:
        raise ValueError("no step log given")
    header: dict[str, Any] | None = None
    samples: list[tuple[BatchShape, float]] = []
    num_requests = 0
    for path in paths:
        log_header, steps, requests = read_step_log(path)
        if header is not None and log_header["engine"] != header["engine"]:
            raise ValueError(
                f"{path} was logged with other engine settings than {paths[0]} "
                f"({log_header['engine']} vs {header['engine']})"
            )
        header = log_header

        def inside(t: float) -> bool:
            return windows is None or any(start <= t <= end for start, end in windows)

        # Samples are taken over the whole log (a step's overhead is the gap after it), then
        # kept by when the step started.
        samples += [sample for step, sample in zip(steps, step_samples(steps)) if inside(step["t"])]
        num_requests += sum(1 for request in requests if inside(request["add"]))
    assert header is not None
    if not samples:
        raise ValueError(f"no steps in {', '.join(map(str, paths))} (within the time window)")
    metadata = {
        "engine": header["engine"],
        "arch": header["arch"],
        "source": {
            "step_logs": [str(path) for path in paths],
            "windows": [list(window) for window in windows] if windows is not None else None,
            "num_requests": num_requests,
        },
    }
    return ProfiledCostModel.fit(samples, metadata=metadata, target=fit_target)
