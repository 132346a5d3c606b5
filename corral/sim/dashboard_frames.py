"""The dashboard's frames of a simulated instance (`corral simulate run --dashboard-frames
PATH`): the same scheduler snapshot (corral/core/dashboard_snapshot.py) and step timeline
(corral/core/step_timeline.py) as `corral serve`'s /dashboard, taken on the virtual clock every
dashboard_interval_s, with the instance's counters under the names /metrics gives them.
`corral simulate dashboard PATH` replays them on the same page (corral/sim/dashboard_replay.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from corral.core.dashboard_snapshot import scheduler_snapshot
from corral.core.messages import RequestUpdate, SchedulerOutput
from corral.core.scheduler import Scheduler
from corral.core.step_timeline import StepTimeline
from corral.serve.dashboard.readings import Reading, Windows

SUMMARY_WINDOWS_S = (10.0, 60.0)


class InstanceFrames:
    """One instance's frames; fed by SimInstance on every step and update."""

    def __init__(self, index: int, interval_s: float) -> None:
        self.index = index
        self.interval_s = interval_s
        self.timeline = StepTimeline()
        self.windows = Windows()
        self.frames: list[dict[str, Any]] = []
        self.counters = {
            "corral:request_success": 0.0,
            "corral:prompt_tokens": 0.0,
            "corral:generation_tokens": 0.0,
            "corral:num_preemptions": 0.0,
            "corral:prefix_cache_queries": 0.0,
            "corral:prefix_cache_hits": 0.0,
        }
        self._next_frame_s = 0.0
        self._last_step = 0

    def on_step(self, output: SchedulerOutput, start_s: float, end_s: float) -> None:
        self.timeline.record(output, start_s, end_s)

    def on_request(self, num_prompt_tokens: int) -> None:
        """A request reached the instance (its prompt tokens count from then on)."""
        self.counters["corral:prompt_tokens"] += num_prompt_tokens

    def on_updates(self, updates: Iterable[RequestUpdate]) -> None:
        counters = self.counters
        for update in updates:
            counters["corral:generation_tokens"] += len(update.new_token_ids)
            if update.finish_reason is not None:
                counters["corral:request_success"] += 1

    def maybe_frame(self, scheduler: Scheduler, now_s: float) -> None:
        """Take a frame if dashboard_interval_s has passed since the last one."""
        if now_s < self._next_frame_s:
            return
        self._next_frame_s = now_s + self.interval_s
        stats = scheduler.stats()
        counters = self.counters
        counters["corral:num_preemptions"] = float(stats.num_preemptions)
        counters["corral:prefix_cache_queries"] = float(stats.prefix_query_tokens)
        counters["corral:prefix_cache_hits"] = float(stats.prefix_hit_tokens)
        gauges = {
            "corral:num_requests_running": float(stats.num_running),
            "corral:num_requests_waiting": float(stats.num_waiting),
            "corral:kv_cache_usage_perc": stats.kv_cache_usage,
        }
        self.windows.add(Reading(now_s, dict(counters), gauges))
        frame = {
            "kind": "engine",
            "model": f"simulated instance {self.index}",
            "instance": self.index,
            "healthy": True,
            "now_s": now_s,
            **scheduler_snapshot(scheduler),
            "steps": self.timeline.since(self._last_step),
            "counters": dict(counters),
            "gauges": gauges,
            "slo": scheduler.slo_stats().by_class(),
            "windows": [self.windows.summary(w) for w in SUMMARY_WINDOWS_S],
        }
        if frame["steps"]:
            self._last_step = int(frame["steps"][-1][0])
        self.frames.append(frame)


def write_frames(path: str | Path, instances: Iterable[Any]) -> int:
    """Every instance's frames as JSON lines, in time order; returns how many."""
    frames = [
        frame
        for instance in instances
        if instance.dashboard is not None
        for frame in instance.dashboard.frames
    ]
    frames.sort(key=lambda frame: (frame["now_s"], frame["instance"]))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        for frame in frames:
            out.write(json.dumps(frame, separators=(",", ":")) + "\n")
    return len(frames)
