"""KV transfer between simulated instances: corral's connector scheduler half, a worker half in
virtual time.

Each instance of a disaggregated cluster runs the real KVConnectorScheduler (corral/kv_transfer/
scheduler_half.py), set on its scheduler as the engine core sets it, and a SimKVConnectorWorker
in its executor in place of the threads and sockets of corral/kv_transfer/worker_half.py. The
worker obeys each step's ConnectorPlan with the real LeaseTable and FetchTable state machines
(corral/kv_transfer/protocol.py):

- a lease order opens the lease on the lending (prefill) instance; its expiry is decided by the
  scheduler half on the instance's virtual clock, which is woken at the deadline;
- a fetch order asks the lease on the instance its endpoint names (sim://<index>): refused at
  once when that lease is not open or holds other blocks (as the real lender refuses), else the
  transfer takes num_blocks x block_size x kv_bytes_per_token / bandwidth + latency of virtual
  time, after which the lease is released "acked" and the fetch reported ok.

What a worker reports reaches its scheduler in the ModelOutput.connector_events of the
instance's next step; both instances are woken when a transfer ends, so an instance whose only
work is a pending transfer waits for it instead of stepping. Transfers do not contend for links.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from corral.config import KVTransferConfig
from corral.kv_transfer.messages import ConnectorEvents, ConnectorPlan, FetchOrder
from corral.kv_transfer.params import RemotePrefill
from corral.kv_transfer.protocol import LEASE_OPEN_WAIT_S, FetchTable, LeaseTable
from corral.kv_transfer.scheduler_half import KVConnectorScheduler
from corral.sim.instance import SimInstance

# Every simulated instance runs the same model, tokenizer and KV layout.
SIM_KV_IDENTITY = "sim"
# A fetch of a lease not yet open asks again this much later (virtual seconds).
_RETRY_S = 0.001
# What a fetched block "holds": the simulator moves no bytes (FetchTable wants a payload).
_NO_PAYLOAD = b""

Schedule = Callable[[float, Callable[[], None]], None]


def sim_endpoint(index: int) -> str:
    """The transfer endpoint of the instance in slot index (RemotePrefill.endpoint)."""
    return f"sim://{index}"


class SimKVConnectorWorker:
    """One instance's worker half (see the module docstring): apply(plan) then poll(), each
    step, as corral.kv_transfer.worker_half.KVConnectorWorker."""

    def __init__(
        self,
        links: SimKVLinks,
        endpoint: str,
        config: KVTransferConfig,
        kv_bytes_per_token: int,
        wake: Callable[[], None],
    ) -> None:
        self.links = links
        self.endpoint = endpoint
        self.config = config
        self.kv_bytes_per_token = kv_bytes_per_token
        self.wake = wake
        self.leases = LeaseTable()
        self.fetches = FetchTable()
        self._open_ids: set[str] = set()  # leases not yet reported released
        self.scheduler_half: KVConnectorScheduler | None = None  # set by SimKVLinks.connect

    def scheduler_has_lease(self, transfer_id: str) -> bool:
        """Its scheduler half lent the lease (this worker opens it at the next step)."""
        return self.scheduler_half is not None and self.scheduler_half.is_lending(transfer_id)

    def apply(self, plan: ConnectorPlan | None) -> None:
        """Open and expire leases, start and cancel fetches (at the step's start)."""
        if not plan:
            return
        links = self.links
        for lease in plan.leases:
            self.leases.open(lease.transfer_id, lease.block_ids, lease.block_hashes)
            self._open_ids.add(lease.transfer_id)
            # The scheduler half set its deadline at or before now: this wake finds it passed.
            deadline_s = links.clock() + self.config.lease_timeout_s
            links.schedule(deadline_s, functools.partial(self._on_deadline, lease.transfer_id))
        for transfer_id in plan.expire:
            self.leases.expire(transfer_id)
        for order in plan.fetches:
            self.fetches.start(order.request_id, order.block_ids)
            links.fetch(self, order)
        for request_id in plan.cancel:
            self.fetches.cancel(request_id)
        for params in plan.declines:
            links.decline(params)

    def poll(self) -> ConnectorEvents | None:
        """Fetches finished and leases released since the last poll."""
        for ready in self.fetches.take_ready():
            self.fetches.installed(ready, True)
        released = self.leases.take_released()
        for lease in released:
            self._open_ids.discard(lease.transfer_id)
        events = ConnectorEvents(self.fetches.take_results(), released)
        return events or None

    def _on_deadline(self, transfer_id: str) -> None:
        if transfer_id in self._open_ids:
            self.wake()  # its next step's take_plan orders the expiry


class SimKVLinks:
    """The transfer network of a disaggregated cluster: every instance's worker half by
    endpoint; schedule(when, call) runs call at virtual time when (the cluster's event queue)."""

    def __init__(
        self,
        bandwidth_bytes_per_s: float,
        latency_s: float,
        clock: Callable[[], float],
        schedule: Schedule,
    ) -> None:
        self.bandwidth_bytes_per_s = bandwidth_bytes_per_s
        self.latency_s = latency_s
        self.clock = clock
        self.schedule = schedule
        self._workers: dict[str, SimKVConnectorWorker] = {}

    def connect(
        self, instance: SimInstance, lease_timeout_s: float, wake: Callable[[], None]
    ) -> SimKVConnectorWorker:
        """Give a prefill or decode instance its two connector halves (as EngineCore does for
        --kv-role); wake() makes it step when its transfers need it."""
        endpoint = sim_endpoint(instance.index)
        role = "both" if instance.spec.role == "mixed" else instance.spec.role  # migration
        config = KVTransferConfig(role=role, lease_timeout_s=lease_timeout_s)
        worker = SimKVConnectorWorker(
            self, endpoint, config, instance.spec.kv_bytes_per_token, wake
        )
        self._workers[endpoint] = worker
        instance.executor.connector = worker
        scheduler = instance.scheduler
        scheduler.connector = KVConnectorScheduler(
            config,
            instance.kv,
            lambda: scheduler.clock(),
            endpoint=endpoint,
            kv_identity=SIM_KV_IDENTITY,
        )
        worker.scheduler_half = scheduler.connector
        return worker

    def decline(self, params: RemotePrefill, waited_s: float = 0.0) -> None:
        """A fetcher will not fetch the lease: its lender frees it (once it is open)."""
        lender = self._workers.get(params.endpoint)
        if lender is None:
            return
        if lender.leases.begin_send(params.transfer_id) is not None:
            lender.leases.end_send(params.transfer_id, "refused")
            lender.wake()
        elif lender.scheduler_has_lease(params.transfer_id) and waited_s < LEASE_OPEN_WAIT_S:
            retry = functools.partial(self.decline, params, waited_s + _RETRY_S)
            self.schedule(self.clock() + _RETRY_S, retry)

    def transfer_time_s(self, num_bytes: int) -> float:
        """Virtual seconds one fetch of num_bytes takes (links are not shared)."""
        return num_bytes / self.bandwidth_bytes_per_s + self.latency_s

    def fetch(self, receiver: SimKVConnectorWorker, order: FetchOrder, waited_s: float = 0) -> None:
        """Start one fetch (its FetchTable entry is RECEIVING): refused, or delivered after the
        transfer time. A lease the lender has yet to open is waited for, as the real lender
        waits (LEASE_OPEN_WAIT_S): the ask can arrive before the lender's next step."""
        params = order.params
        lender = self._workers.get(params.endpoint)
        lease = lender.leases.begin_send(params.transfer_id) if lender is not None else None
        opening = lender is not None and lender.scheduler_has_lease(params.transfer_id)
        if lease is None and opening and waited_s < LEASE_OPEN_WAIT_S:
            retry = functools.partial(self.fetch, receiver, order, waited_s + _RETRY_S)
            self.schedule(self.clock() + _RETRY_S, retry)
            return
        if lender is None or lease is None:
            receiver.fetches.deliver(order.request_id, None, "refused: no such open lease")
            return
        num_blocks, first = len(order.block_ids), order.first_block
        if not 0 < first + num_blocks <= len(lease.block_ids) or (
            order.block_hashes != lease.block_hashes[first : first + num_blocks]
        ):
            lender.leases.end_send(params.transfer_id, "refused")
            receiver.fetches.deliver(order.request_id, None, "refused: other blocks")
            return
        num_bytes = num_blocks * params.block_size * lender.kv_bytes_per_token
        seconds = self.transfer_time_s(num_bytes)
        done = functools.partial(self._delivered, lender, receiver, order, num_bytes, seconds)
        self.schedule(self.clock() + seconds, done)

    def _delivered(
        self,
        lender: SimKVConnectorWorker,
        receiver: SimKVConnectorWorker,
        order: FetchOrder,
        num_bytes: int,
        seconds: float,
    ) -> None:
        lender.leases.end_send(order.params.transfer_id, "acked")
        receiver.fetches.deliver(order.request_id, _NO_PAYLOAD, "", num_bytes, seconds)
        lender.wake()
        receiver.wake()
