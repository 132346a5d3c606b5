"""The engines of the KV transfer protocol model (tests/kv_transfer/protocol_cluster.py puts
two of them and a network together), without torch and without sockets.

A prefill engine is a real KVCacheManager, a real KVConnectorScheduler with role "prefill" and a
real LeaseTable standing in for its worker half; a decode engine the same with role "decode"
and a FetchTable. They run requests as corral/core/scheduler.py does (prefix hits, fresh
blocks, the lease taken before a finished request frees its blocks, parking, requeueing).

Each engine also keeps a "device memory": which tokens each block's KV was computed from. A
block lent under a lease must keep its contents until the lease is released, and a prefix hit
on the decode engine must hold exactly the tokens it stands for, whoever wrote it (a local
computation or a fetched copy).
"""

from __future__ import annotations

from dataclasses import dataclass

from corral.config import KVTransferConfig
from corral.core.kv_cache import KVCacheManager
from corral.kv_transfer.messages import ConnectorEvents, FetchOrder, FetchResult
from corral.kv_transfer.params import RemotePrefill
from corral.kv_transfer.protocol import FetchTable, LeaseTable
from corral.kv_transfer.scheduler_half import KVConnectorScheduler
from corral.request import Request, RequestStatus

BLOCK_SIZE = 4
LEASE_TIMEOUT_S = 10.0
MODEL_A, MODEL_B = "model-a", "model-b"  # kv identities
ENDPOINT = "tcp://prefill.test:7000"
MAX_MODEL_LEN = 256
PREFILL_BLOCKS, DECODE_BLOCKS = 16, 24

Content = tuple[int, ...]  # the tokens one block's KV was computed from


def block_content(tokens: list[int], index: int) -> Content:
    return tuple(tokens[index * BLOCK_SIZE : (index + 1) * BLOCK_SIZE])


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Engine:
    """What one engine's control plane does with its KV blocks, as corral/core/scheduler.py
    does it, plus the device memory."""

    def __init__(self, role: str, num_blocks: int, clock: FakeClock, identity: str) -> None:
        self.identity = identity
        self.kv = KVCacheManager(num_blocks, BLOCK_SIZE)
        config = KVTransferConfig(role=role, lease_timeout_s=LEASE_TIMEOUT_S)
        self.connector = KVConnectorScheduler(
            config, self.kv, clock, endpoint=ENDPOINT, kv_identity=identity
        )
        self.memory: dict[int, Content] = {}

    def start(self, request: Request) -> bool:
        """Admit a request (prefix hits, then fresh blocks, as Scheduler._admit_waiting) and
        write its tokens' KV into the fresh blocks. False, changing nothing, without room."""
        kv, tokens = self.kv, request.all_token_ids
        prefix = kv.match_prefix(request)
        for index, block in enumerate(prefix.blocks):
            held = self.memory.get(block.block_id)
            assert held == block_content(tokens, index), f"{request}: hit {block} holds {held}"
        if kv.allocate_slots(request, request.num_tokens - prefix.num_tokens, prefix) is None:
            return False
        block_ids = kv.block_ids(request.request_id)
        for index in range(len(prefix.blocks), len(block_ids)):
            self.memory[block_ids[index]] = block_content(tokens, index)
        request.num_computed_tokens = prefix.num_tokens
        request.status = RequestStatus.RUNNING
        return True

    def finish(self, request: Request, status: RequestStatus) -> RemotePrefill | None:
        """The request's step ran (all computed, one token sampled) and it finished with status:
        Scheduler.update's order, the lease taken before the blocks are freed."""
        request.num_computed_tokens = request.num_tokens
        self.kv.cache_blocks(request)
        request.append_output_token(7)
        request.status = status
        lease = self.connector.on_finished(request)
        self.release(request)
        return lease

    def abort(self, request: Request) -> None:
        """Scheduler.finish_requests."""
        request.status = RequestStatus.FINISHED_ABORTED
        self.connector.on_aborted(request)
        self.release(request)

    def release(self, request: Request) -> None:
        self.connector.forget(request)
        self.kv.free(request)


@dataclass
class Lent:
    """A lease as the prefill engine handed it out: its blocks and what they must hold."""

    params: RemotePrefill
    prompt: list[int]
    block_ids: list[int]
    content: tuple[Content, ...]


class PrefillEngine(Engine):
    def __init__(self, clock: FakeClock, identity: str) -> None:
        super().__init__("prefill", PREFILL_BLOCKS, clock, identity)
        self.leases = LeaseTable()  # the worker half's
        self.lent: dict[str, Lent] = {}
        self.opened: set[str] = set()
        self.released: dict[str, str] = {}  # reported to the scheduler half: reason

    def run(self, request: Request, status: RequestStatus) -> Lent | None:
        """Run a request to its end in one step; the lease it leaves, if any."""
        if not self.start(request):
            return None
        if status == RequestStatus.FINISHED_ABORTED:
            self.abort(request)
            return None
        block_ids = self.kv.block_ids(request.request_id)
        params = self.finish(request, status)
        if params is None:
            return None
        assert params.num_blocks == (request.num_prompt_tokens - 1) // BLOCK_SIZE
        prompt = request.prompt_token_ids
        content = tuple(block_content(prompt, index) for index in range(params.num_blocks))
        lent = Lent(params, prompt, block_ids[: params.num_blocks], content)
        assert tuple(self.memory[b] for b in lent.block_ids) == content
        self.lent[params.transfer_id] = lent
        return lent

    def step(self) -> None:
        """One engine step: take_plan, the worker opens and expires leases, reports releases."""
        plan = self.connector.take_plan()
        if plan:
            assert not plan.fetches and not plan.cancel
            for order in plan.leases:
                lent = self.lent[order.transfer_id]
                assert order.transfer_id not in self.opened
                assert order.block_ids == lent.block_ids
                self.leases.open(order.transfer_id, order.block_ids, order.block_hashes)
                self.opened.add(order.transfer_id)
            for transfer_id in plan.expire:
                assert transfer_id in self.opened, "expired before it was opened"
                self.leases.expire(transfer_id)
        released = self.leases.take_released()
        for item in released:
            assert item.transfer_id in self.opened, f"{item} was never opened"
            assert item.transfer_id not in self.released, f"{item} released twice"
            self.released[item.transfer_id] = item.reason
        self.connector.update(ConnectorEvents(released=released))


class DecodeEngine(Engine):
    def __init__(self, clock: FakeClock) -> None:
        super().__init__("decode", DECODE_BLOCKS, clock, MODEL_A)
        self.fetches = FetchTable()  # the worker half's
        self.waiting: list[Request] = []
        self.parked: dict[str, Request] = {}
        self.running: list[Request] = []
        self.fetching: dict[str, FetchOrder] = {}  # started, not yet reported
        self.num_started = 0
        self.results: list[FetchResult] = []  # reported to the scheduler half, in order
        self.last_result: dict[str, FetchResult] = {}
        self.ended: list[str] = []  # ids of the requests that finished or were aborted

    def requests(self) -> list[Request]:
        return [*self.waiting, *self.parked.values(), *self.running]

    def admit(self, request: Request) -> str:
        """Admit a waiting request: parked (fetching), running, or still waiting (no room)."""
        if self.connector.try_park(request):
            self.waiting.remove(request)
            self.parked[request.request_id] = request
            return "parked"
        if not self.start(request):
            return "waiting"
        self.waiting.remove(request)
        self.connector.on_admitted(request)
        self.running.append(request)
        return "running"

    def complete(self, request: Request) -> None:
        self.running.remove(request)
        assert self.finish(request, RequestStatus.FINISHED_LENGTH) is None

    def preempt(self, request: Request) -> None:
        """Preemption by recompute: blocks freed, the request queued again."""
        self.running.remove(request)
        self.kv.free(request)
        request.num_computed_tokens = 0
        request.status = RequestStatus.PREEMPTED
        self.waiting.append(request)

    def release(self, request: Request) -> None:
        super().release(request)
        self.ended.append(request.request_id)

    def cancel(self, request: Request) -> None:
        for queue in (self.waiting, self.running):
            if request in queue:
                queue.remove(request)
        self.parked.pop(request.request_id, None)
        self.abort(request)

    def step(self, install_ok: bool) -> list[FetchOrder]:
        """One engine step: take_plan, the worker starts and cancels fetches, installs the
        verified ones (install_ok: the write succeeds), reports; returns the fetches started."""
        plan = self.connector.take_plan()
        started = []
        if plan:
            assert not plan.leases and not plan.expire
            for order in plan.fetches:
                assert order.request_id not in self.fetching, f"{order.request_id} fetched twice"
                assert len(order.block_ids) == len(order.block_hashes) > 0
                self.fetches.start(order.request_id, order.block_ids)
                self.fetching[order.request_id] = order
                self.num_started += 1
                started.append(order)
            for request_id in plan.cancel:
                self.fetches.cancel(request_id)
        for ready in self.fetches.take_ready():
            if install_ok:
                for block_id, content in zip(ready.block_ids, ready.payload, strict=True):
                    self.memory[block_id] = content
                self.fetches.installed(ready, True)
            else:
                self.fetches.installed(ready, False, "install failed")
        results = self.fetches.take_results()
        for result in results:
            assert result.request_id in self.fetching, f"{result}: reported twice or unasked"
            del self.fetching[result.request_id]
            self.results.append(result)
            self.last_result[result.request_id] = result
        for request in self.connector.update(ConnectorEvents(fetched=results)):
            assert self.parked.pop(request.request_id) is request
            assert request.status == RequestStatus.WAITING
            self.waiting.insert(0, request)
        return started
