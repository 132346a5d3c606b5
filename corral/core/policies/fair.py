"""Fair share across clients with the Virtual Token Counter (VTC), after Sheng et al., "Fairness
in Serving Large Language Models", OSDI 2024.

Each client (Request.client_id; None is one anonymous client) has a counter of the service it
received: input_weight per prompt token when one of its requests is admitted, output_weight per
generated token. The next admission goes to the backlogged client (one with waiting requests)
with the smallest counter, oldest request first. A client that becomes backlogged again has its
counter lifted to the smallest counter among the backlogged clients (or, when none is, to that
of the client served last), so idling earns no credit. Between two continuously backlogged
clients the service difference stays within 2 * max(input_weight * max prompt tokens,
output_weight * tokens the KV cache holds) (the paper's bound).
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict

from corral.core.policies.base import SCHEDULING_POLICIES, SchedulingPolicy
from corral.request import Request

# Idle clients' counters kept before those at or below the lift floor are forgotten.
_MAX_IDLE_COUNTERS = 4096


@SCHEDULING_POLICIES.register("fair")
class VTCPolicy(SchedulingPolicy):
    """Options: input_weight (1.0) and output_weight (2.0), the paper's defaults."""

    def __init__(self, input_weight: float = 1.0, output_weight: float = 2.0) -> None:
        super().__init__()
        if input_weight < 0 or output_weight < 0 or input_weight + output_weight == 0:
            raise ValueError(
                f"VTC weights must be >= 0 and not both 0, got input_weight={input_weight}, "
                f"output_weight={output_weight}"
            )
        self.input_weight = float(input_weight)
        self.output_weight = float(output_weight)
        self.counters: dict[str, float] = {}
        self._queues: dict[str, OrderedDict[str, Request]] = {}
        # Backlogged clients by counter: (counter, sequence, client); an entry is live iff its
        # sequence number is _live_entry[client] (lazy deletion on every counter change).
        self._heap: list[tuple[float, int, str]] = []
        self._live_entry: dict[str, int] = {}
        self._sequence = itertools.count()
        self._last_served_counter = 0.0
        self._charged_input: set[str] = set()
        # Running requests per client (admitted, not yet finished or preempted).
        self._running: dict[str, str] = {}
        self._num_running: dict[str, int] = {}
        self._num_waiting = 0

    @staticmethod
    def client_of(request: Request) -> str:
        return request.client_id or ""

    # ----- backlogged clients ---------------------------------------------------------------

    def _push_client(self, client: str) -> None:
        sequence = next(self._sequence)
        self._live_entry[client] = sequence
        heapq.heappush(self._heap, (self.counters[client], sequence, client))
        if len(self._heap) > 2 * len(self._live_entry) + 64:
            self._heap = [e for e in self._heap if self._live_entry.get(e[2]) == e[1]]
            heapq.heapify(self._heap)

    def _min_client(self) -> str | None:
        heap = self._heap
        while heap and self._live_entry.get(heap[0][2]) != heap[0][1]:
            heapq.heappop(heap)
        return heap[0][2] if heap else None

    def _lift_floor(self) -> float:
        """The least counter among backlogged clients, else among clients with running
        requests, else the counter of the client served last."""
        least = self._min_client()
        if least is not None:
            return self.counters[least]
        running = [self.counters[c] for c, n in self._num_running.items() if n > 0]
        return min(running) if running else self._last_served_counter

    def _charge(self, client: str, amount: float) -> None:
        self.counters[client] = self.counters.get(client, 0.0) + amount
        if client in self._live_entry:
            self._push_client(client)

    # ----- waiting queue --------------------------------------------------------------------

    def add_waiting(self, request: Request) -> None:
        client = self.client_of(request)
        queue = self._queues.setdefault(client, OrderedDict())
        if not queue:
            # Newly backlogged: lift the counter so idle time earns no credit.
            floor = self._lift_floor()
            self.counters[client] = max(self.counters.get(client, 0.0), floor)
            self._push_client(client)
            if len(self.counters) > _MAX_IDLE_COUNTERS + len(self._live_entry):
                self._forget_idle_clients(floor)
        queue[request.request_id] = request
        self._num_waiting += 1

    def requeue_preempted(self, request: Request) -> None:
        client = self.client_of(request)
        self._stop_running(request)
        queue = self._queues.setdefault(client, OrderedDict())
        queue[request.request_id] = request
        queue.move_to_end(request.request_id, last=False)
        self._num_waiting += 1
        if client not in self._live_entry:
            self.counters.setdefault(client, self._last_served_counter)
            self._push_client(client)

    def peek_waiting(self) -> Request | None:
        client = self._min_client()
        if client is None:
            return None
        return next(iter(self._queues[client].values()))

    def pop_waiting(self) -> Request:
        client = self._min_client()
        if client is None:
            raise IndexError("no request is waiting")
        request = self._queues[client].popitem(last=False)[1]
        self._num_waiting -= 1
        self._running[request.request_id] = client
        self._num_running[client] = self._num_running.get(client, 0) + 1
        if not self._queues[client]:
            del self._live_entry[client], self._queues[client]
        if request.request_id not in self._charged_input:
            # Charged at admission, so that several admissions in one step see the change.
            self._charged_input.add(request.request_id)
            self._charge(client, self.input_weight * request.num_prompt_tokens)
        self._last_served_counter = self.counters[client]
        return request

    def remove_waiting(self, request: Request) -> bool:
        client = self.client_of(request)
        queue = self._queues.get(client)
        if queue is None or queue.pop(request.request_id, None) is None:
            return False
        self._num_waiting -= 1
        if not queue:
            self._live_entry.pop(client, None)
            del self._queues[client]
        return True

    def num_waiting(self) -> int:
        return self._num_waiting

    # ----- service accounting ---------------------------------------------------------------

    def on_step(self, num_scheduled_tokens: dict[str, int], requests: dict[str, Request]) -> None:
        """Charge output_weight per token sampled this step to the request's client."""
        sampled: dict[str, int] = {}
        for request_id, num_tokens in num_scheduled_tokens.items():
            request = requests[request_id]
            if request.num_computed_tokens + num_tokens == request.num_tokens:
                client = self.client_of(request)
                sampled[client] = sampled.get(client, 0) + 1
        for client, count in sampled.items():
            self._charge(client, self.output_weight * count)

    def select_victim(self, running: list[Request]) -> Request:
        """The newest request of the client with the most service."""
        return max(
            running,
            key=lambda r: (self.counters.get(self.client_of(r), 0.0), r.arrival_time),
        )

    def _forget_idle_clients(self, floor: float) -> None:
        """Drop counters that a return would lift anyway (idle clients at or below the floor),
        so that many one-off client ids do not grow memory without bound."""
        for client in [c for c, v in self.counters.items() if v <= floor]:
            if client not in self._live_entry and client not in self._num_running:
                del self.counters[client]

    def _stop_running(self, request: Request) -> None:
        client = self._running.pop(request.request_id, None)
        if client is not None:
            self._num_running[client] -= 1
            if not self._num_running[client]:
                del self._num_running[client]

    def on_request_finished(self, request: Request) -> None:
        self._charged_input.discard(request.request_id)
        self._stop_running(request)
