"""The simulated executor's LoRA side: which scheduled tokens run through which adapter, and
what the adapters add to a step (their compute, and the loads into slots before it)."""

from __future__ import annotations

from corral.core.messages import SchedulerOutput
from corral.sim.cost.adapter_loads import AdapterLoadCost
from corral.sim.cost.lora import LoRACost, LoRAShape

_NO_LORA = LoRAShape()


class LoRAShapeCounter:
    """Follows each request's adapter slot (NewRequestData.lora_slot, set while it runs; a
    preempted request comes back as a new one) and each slot's rank (from the loads of the
    AdapterPlan), and counts a step's LoRAShape."""

    def __init__(self) -> None:
        self._slot_of: dict[str, int] = {}
        self._slot_ranks: dict[int, int] = {}

    def count(self, scheduler_output: SchedulerOutput) -> LoRAShape:
        slot_of, ranks = self._slot_of, self._slot_ranks
        plan = scheduler_output.adapter_plan
        if plan is not None:
            for load in plan.loads:
                ranks[load.slot] = load.adapter.rank
        for request_id in scheduler_output.finished_request_ids:
            slot_of.pop(request_id, None)
        for request_id in scheduler_output.preempted_request_ids:
            slot_of.pop(request_id, None)
        for new in scheduler_output.new_requests:
            if new.lora_slot is not None:
                slot_of[new.request_id] = new.lora_slot
        if not slot_of:
            return _NO_LORA
        num_tokens = rank_tokens = 0
        segments: set[int] = set()
        for request_id, num_scheduled in scheduler_output.num_scheduled_tokens.items():
            slot = slot_of.get(request_id)
            if slot is None:
                continue
            num_tokens += num_scheduled
            rank_tokens += num_scheduled * ranks[slot]
            segments.add(slot)
        rank_sum = sum(ranks[slot] for slot in segments)
        return LoRAShape(num_tokens, len(segments), rank_tokens, rank_sum)


class LoRAStepPricer:
    """Prices each step's adapter work and keeps the totals for the report."""

    def __init__(self, compute: LoRACost, loads: AdapterLoadCost) -> None:
        self.compute = compute
        self.loads = loads
        self._counter = LoRAShapeCounter()
        self.last_shape = _NO_LORA
        self.num_lora_tokens = 0
        self.compute_time_s = 0.0
        self.load_time_s = 0.0

    def step_time_s(self, scheduler_output: SchedulerOutput) -> float:
        """Seconds the adapters add to this step: loads into slots, then their compute."""
        shape = self._counter.count(scheduler_output)
        self.last_shape = shape
        time_s = 0.0
        plan = scheduler_output.adapter_plan
        if plan is not None and plan.loads:
            load_s = self.loads.time_s(plan)
            self.load_time_s += load_s
            time_s += load_s
        if shape.num_tokens:
            compute_s = self.compute.time_s(shape)
            self.num_lora_tokens += shape.num_tokens
            self.compute_time_s += compute_s
            time_s += compute_s
        return time_s
