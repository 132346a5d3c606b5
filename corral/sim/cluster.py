"""ClusterSimulator: a discrete-event simulation of instances behind a router, on one clock.

Events, in time order; at equal times arrivals come first, then KV-transfer events (a fetch
ending, a lease's deadline), then step ends, then step starts, then other calls (autoscaling
decisions, instances starting to serve, requests leaving the request path), so a step that starts
at t sees every request that arrived by t and a decision at t sees the steps that ended by t.
With ClusterSpec.autoscale set, a SimAutoscaler (corral/sim/autoscale.py) runs the shared
autoscaling policy over the instances.

Disaggregated (prefill and decode instances), a request runs as the real router runs it
(corral/cluster/disaggregated.py): on a prefill instance with max_tokens 1 and RemoteDecode,
whose token the client never sees; then, with the RemotePrefill the prefill instance answered,
as the client's request on a decode instance, which fetches the prompt's KV through corral's KV
connector (corral/sim/kv_transfer_sim.py) and generates every output token.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import math
import time
from array import array
from collections.abc import Callable

from corral.cluster.routing import RouterPolicy, make_router
from corral.core.messages import RequestUpdate
from corral.engine.consensus import AGREED
from corral.kv_transfer.params import KVTransferRequest, RemoteDecode
from corral.request import Request
from corral.sampling_params import SamplingParams
from corral.sim.autoscale import SimAutoscaler
from corral.sim.config import ClusterSpec
from corral.sim.instance import SimInstance
from corral.sim.kv_transfer_sim import SimKVLinks
from corral.sim.migration_sim import SimRebalancer
from corral.sim.result import RequestHook, SimResult, routing_request
from corral.workloads.metrics import RequestRecord
from corral.workloads.spec import RequestSpec, Workload, check_lengths

_ARRIVAL, _TRANSFER, _STEP_END, _WAKE, _CALL = 0, 1, 2, 3, 4


class ClusterSimulator:
    """request_hook, if given, sees every Request the simulator creates (with its spec) before
    it is routed: a place to set fields a policy reads, such as predicted_num_output_tokens or
    deadline_s. Disaggregated requests are seen twice (prefill leg, then decode leg)."""

    def __init__(
        self, spec: ClusterSpec, workload: Workload, request_hook: RequestHook | None = None
    ) -> None:
        self.spec = spec
        self.workload = workload
        self.request_hook = request_hook
        self.now = 0.0
        self.instances = [
            SimInstance(
                index,
                instance_spec,
                self._clock,
                spec.kv_sample_interval_s,
                spec.seed,
                spec.dashboard_interval_s,
                spec.voting,
                spec.structured,
            )
            for index, instance_spec in enumerate(spec.instances)
        ]
        self.max_model_len = min(s.max_model_len for s in spec.instances)
        # A turn's id -> the pause before its conversation's next turn (session_pause_oracle).
        self._next_pause = workload.next_pauses_s()
        check_lengths(workload.specs, self.max_model_len)
        self.kv_links: SimKVLinks | None = None
        self.rebalancer: SimRebalancer | None = None
        if spec.is_disaggregated or spec.rebalance_kv_usage is not None:
            self.kv_links = SimKVLinks(
                spec.kv_transfer_bandwidth_bytes_per_s,
                spec.kv_transfer_latency_s,
                self._clock,
                self._transfer_at,
            )
            for instance in self.instances:
                wake = functools.partial(self._wake, instance)
                self.kv_links.connect(instance, spec.kv_lease_timeout_s, wake)
        if spec.is_disaggregated:
            self.prefill_pool = [i for i in self.instances if i.spec.role == "prefill"]
            self.decode_pool = [i for i in self.instances if i.spec.role == "decode"]
        else:
            self.prefill_pool = self.decode_pool = self.instances
        if spec.rebalance_kv_usage is not None:
            self.rebalancer = SimRebalancer(self, spec.rebalance_kv_usage)
        self.prefill_router = self._make_router(self.prefill_pool, spec.seed)
        self.decode_router = (
            self._make_router(self.decode_pool, spec.seed + 1)
            if spec.is_disaggregated
            else self.prefill_router
        )
        self.records: dict[str, RequestRecord] = {}
        self._specs = {request_spec.request_id: request_spec for request_spec in workload.specs}
        self._children: dict[str, list[RequestSpec]] = {}
        self._finished: set[str] = set()
        self._heap: list[tuple] = []
        self._seq = itertools.count()
        self._last_step_end_s = 0.0
        self._params: dict[tuple[int, int], SamplingParams] = {}
        self._prompt_ids: dict[str, list[int]] = {}
        self.routes: dict[str, list[int]] = {}
        self._check_integrity = spec.check_integrity
        assignment = spec.adapter_assignment
        # request id -> its LoRA adapter (absent or None: the base model)
        self._adapters = assignment.assign(workload.specs) if assignment is not None else {}
        # request id -> its grammar (absent: unconstrained; corral/sim/structured.py)
        structured = spec.structured
        self._grammars = structured.assign(workload.specs) if structured is not None else {}
        self.autoscaler = (
            SimAutoscaler(self, spec.autoscale) if spec.autoscale is not None else None
        )

    def _make_router(self, pool: list[SimInstance], seed: int) -> RouterPolicy:
        """The shared policy over the pool, hashing prompts as the pool's KV managers do."""
        return make_router(self.spec.router, pool, seed, prefix_hash=pool[0].spec.prefix_hash)

    def _clock(self) -> float:
        return self.now

    def _push(self, when: float, kind: int, payload: object) -> None:
        heapq.heappush(self._heap, (when, kind, next(self._seq), payload))

    def call_at(self, when: float, call: Callable[[], None]) -> None:
        """Run call() at virtual time `when` (after the other events at that time)."""
        self._push(when, _CALL, call)

    def _transfer_at(self, when: float, call: Callable[[], None]) -> None:
        """Run a KV-transfer event at `when` (before the steps that end then)."""
        self._push(when, _TRANSFER, call)

    def _sampling_params(self, max_tokens: int, n: int = 1) -> SamplingParams:
        params = self._params.get((max_tokens, n))
        if params is None:
            params = SamplingParams(
                n=n, temperature=0.0, max_tokens=max_tokens, ignore_eos=True, detokenize=False
            )
            self._params[(max_tokens, n)] = params
        return params

    # ----- the loop --------------------------------------------------------------------------

    def run(self) -> SimResult:
        """Simulate until every request finished; returns the per-request records."""
        wall_start = time.perf_counter()
        starters = []
        for request_spec in self.workload.specs:
            parent = request_spec.parent_request_id
            if parent is not None and parent in self._specs:
                self._children.setdefault(parent, []).append(request_spec)
            else:
                starters.append(request_spec)
        heap = self._heap
        autoscaler = self.autoscaler
        if autoscaler is not None:
            autoscaler.start()
        if self.rebalancer is not None:
            self.rebalancer.start()
        num_events = 0
        next_index, num_starters = 0, len(starters)
        while heap or next_index < num_starters:
            num_events += 1
            if next_index < num_starters and (
                not heap or starters[next_index].arrival_time_s <= heap[0][0]
            ):
                request_spec = starters[next_index]
                next_index += 1
                self.now = request_spec.arrival_time_s
                self._arrive(request_spec)
                continue
            when, kind, _, payload = heapq.heappop(heap)
            self.now = when
            if kind == _STEP_END:
                self._end_step(*payload)
            elif kind == _WAKE:
                instance = payload
                instance.is_wake_pending = False
                if not instance.is_busy:
                    self._start_step(instance)
            elif kind == _ARRIVAL:
                self._arrive(payload)
            else:  # _TRANSFER, _CALL
                payload()
        if len(self._finished) != len(self.workload.specs):
            missing = len(self.workload.specs) - len(self._finished)
            raise RuntimeError(f"the simulation ended with {missing} requests unfinished")
        records = [self.records[s.request_id] for s in self.workload.specs]
        if autoscaler is not None:
            return SimResult(
                records,
                autoscaler.instances,
                autoscaler.end_s,
                time.perf_counter() - wall_start,
                num_events,
                self.spec,
                self.routes,
                autoscaler.result(),
                self._grammars,
            )
        return SimResult(
            records,
            self.instances,
            self._last_step_end_s,
            time.perf_counter() - wall_start,
            num_events,
            self.spec,
            self.routes,
            grammars=self._grammars,
        )

    def _arrive(self, request_spec: RequestSpec) -> None:
        now = self.now
        request_id = request_spec.request_id
        token_ids = self.workload.token_ids(request_spec)
        self.records[request_id] = RequestRecord(
            request_id,
            now,
            request_spec.num_prompt_tokens,
            0,
            array("d"),
            num_samples=request_spec.samples_per_request,
        )
        if self.spec.is_disaggregated:  # the prefill leg; its token is not the client's
            self._prompt_ids[request_id] = token_ids
            request = self._request(request_spec, token_ids, 1, RemoteDecode())
        else:
            request = self._request(request_spec, token_ids, request_spec.num_output_tokens)
        if self.spec.request_path_s > 0:  # the client, router and frontend first
            self.call_at(now + self.spec.request_path_s, lambda: self._dispatch(request))
        else:
            self._dispatch(request)

    def _request(
        self,
        request_spec: RequestSpec,
        token_ids: list[int],
        max_tokens: int,
        kv_transfer: KVTransferRequest | None = None,
    ) -> Request:
        """The engine request of a spec (seen by the request hook)."""
        request = Request(
            request_spec.request_id,
            token_ids,
            # n > 1: the instance runs its samples (corral/sim/samples.py).
            self._sampling_params(max_tokens, request_spec.samples_per_request),
            max_model_len=self.max_model_len,
            arrival_time=self.now,
            priority=request_spec.priority,
            client_id=request_spec.client_id,
            lora=self._adapters.get(request_spec.request_id),
            kv_transfer=kv_transfer,
            # The engine never migrates a request with a grammar (corral/core/migration.py).
            migratable=self.rebalancer is not None
            and request_spec.request_id not in self._grammars,
            session_id=request_spec.conversation_id,
            rag_chunk_spans=request_spec.rag_chunk_spans,
            session_pause_s=self._next_pause.get(request_spec.request_id, math.inf)
            if self.spec.session_pause_oracle and request_spec.conversation_id is not None
            else None,
        )
        if self.request_hook is not None:
            self.request_hook(request, request_spec)
        return request

    def _dispatch(self, request: Request) -> None:
        """Route an arrived request, or hold it at the autoscaler while no instance serves."""
        autoscaler = self.autoscaler
        if autoscaler is not None and not autoscaler.can_route():
            autoscaler.hold(request)
            return
        pool = self.prefill_pool
        self._assign(pool[self.prefill_router.select(routing_request(request))], request)

    # ----- for the rebalancer (corral/sim/migration_sim.py) ---------------------------------

    def is_done(self) -> bool:
        return len(self._finished) == len(self.workload.specs)

    def request_spec(self, request_id: str) -> RequestSpec:
        return self._specs[request_id]

    def make_request(
        self, request_spec: RequestSpec, token_ids: list[int], kv_transfer: KVTransferRequest | None
    ) -> Request:
        return self._request(request_spec, token_ids, request_spec.num_output_tokens, kv_transfer)

    def assign(self, instance: SimInstance, request: Request) -> None:
        self._assign(instance, request)

    def wake(self, instance: SimInstance) -> None:
        self._wake(instance)

    def _assign(self, instance: SimInstance, request: Request) -> None:
        """Hand a request to an instance; one with a grammar reaches its scheduler once the
        instance's compile of it is done (at once for a cache hit that costs nothing)."""
        self.routes.setdefault(request.request_id, []).append(instance.index)
        grammar = self._grammars.get(request.request_id)
        ready_s = self.now if grammar is None else instance.submit_constrained(grammar, self.now)
        if ready_s > self.now:
            self.call_at(ready_s, functools.partial(self._add, instance, request, True))
        else:
            self._add(instance, request, grammar is not None)

    def _add(self, instance: SimInstance, request: Request, is_constrained: bool) -> None:
        instance.add_request(request, is_constrained)
        self._wake(instance)

    def _wake(self, instance: SimInstance) -> None:
        """Make an idle instance step now (a busy one steps again when its step ends)."""
        if not instance.is_busy and not instance.is_wake_pending:
            instance.is_wake_pending = True
            self._push(self.now, _WAKE, instance)

    def _start_step(self, instance: SimInstance) -> None:
        now = self.now
        step = instance.begin_step(now)
        if step is not None:
            entry = (now + step[1].step_time_s, _STEP_END, next(self._seq), (instance, *step))
            heapq.heappush(self._heap, entry)

    def _end_step(self, instance: SimInstance, scheduler_output, model_output) -> None:
        now = self.now
        self._last_step_end_s = now
        records = self.records
        is_prefill = instance.is_prefill
        for update in instance.end_step(scheduler_output, model_output):
            if is_prefill:
                if update.finish_reason is not None:
                    self._start_decode(update)
                continue
            record = records[update.request_id]
            num_new = len(update.new_token_ids)
            if num_new:
                record.num_output_tokens += num_new
                record.token_times_s.append(now)  # type: ignore[attr-defined]
            if update.finish_reason is not None:
                varied = self.spec.voting is not None and self.spec.voting.sample_length_spread > 0
                agreed = varied or update.stop_reason == AGREED
                self._finish(self._specs[update.request_id], agreed)
        if self._check_integrity:
            instance.kv.check_integrity()
            if instance.scheduler.adapters is not None:
                instance.scheduler.adapters.residency.check_integrity()
        if instance.scheduler.has_unfinished_requests():
            self._start_step(instance)
        elif self.autoscaler is not None:
            self.autoscaler.on_step_end(instance)

    def _finish(self, request_spec: RequestSpec, agreed: bool = False) -> None:
        """agreed: its samples stopped once enough agreed, or were drawn shorter (fewer tokens
        than all samples' full length)."""
        request_id = request_spec.request_id
        if request_id in self._finished:
            raise RuntimeError(f"request {request_id!r} finished twice")
        record = self.records[request_id]
        expected = request_spec.num_sampled_output_tokens
        if record.num_output_tokens != expected and not (
            agreed and record.num_output_tokens < expected
        ):
            raise RuntimeError(
                f"request {request_id!r} finished with {record.num_output_tokens} of "
                f"{request_spec.num_sampled_output_tokens} tokens"
            )
        self._finished.add(request_id)
        if self.autoscaler is not None:
            self.autoscaler.on_finish()
        for child in self._children.pop(request_id, ()):
            self._push(self.now + child.think_time_s, _ARRIVAL, child)

    # ----- disaggregation --------------------------------------------------------------------

    def _start_decode(self, update: RequestUpdate) -> None:
        """The prefill leg finished: the client's request goes to a decode instance with the
        prefill's lease (None when it lent nothing: the decode instance computes the prompt)."""
        request_spec = self._specs[update.request_id]
        token_ids = self._prompt_ids.pop(update.request_id)
        request = self._request(
            request_spec, token_ids, request_spec.num_output_tokens, update.kv_transfer_params
        )
        self._assign(self.decode_pool[self.decode_router.select(routing_request(request))], request)
