"""Two engines of the KV transfer protocol model (protocol_model.py) and a simulated network
between them, with the protocol's invariants (check) and a drain that finishes everything.

A connection goes through the steps worker_half.py's threads take: the fetch thread's ask
reaches the lending side (begin_send, maybe refused: unknown or busy lease, another model,
other tokens) or not (unreachable); the payload reaches the fetching thread (verified, corrupt,
broken, or verified with the ack lost); then each side's thread ends on its own: deliver on the
decode side, end_send on the prefill side. Either engine can die at any time: its in-flight
connections break and a fresh engine takes its place.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
from dataclasses import dataclass

from corral.kv_transfer.messages import FetchOrder
from corral.kv_transfer.params import RemoteDecode
from corral.kv_transfer.protocol import LeaseState
from corral.kv_transfer.scheduler_half import fetch_holder, lease_holder
from corral.request import Request, RequestStatus
from corral.sampling_params import SamplingParams
from tests.kv_transfer.protocol_model import (
    BLOCK_SIZE,
    LEASE_TIMEOUT_S,
    MAX_MODEL_LEN,
    MODEL_A,
    Content,
    DecodeEngine,
    FakeClock,
    Lent,
    PrefillEngine,
)


class Stage(enum.Enum):
    ASKING = "asking"  # the fetch thread's ask is on its way
    SENDING = "sending"  # the lease is SENDING, the payload on its way
    CLOSING = "closing"  # the threads are ending (to_deliver, to_end)


@dataclass(eq=False)
class Connection:
    """One fetch thread's connection and the lending thread serving it."""

    order: FetchOrder
    decode: DecodeEngine
    decode_alive: bool = True
    prefill: PrefillEngine | None = None  # the engine whose lease it began sending
    stage: Stage = Stage.ASKING
    payload: tuple[Content, ...] = ()
    to_deliver: tuple[tuple[Content, ...] | None, str] | None = None  # the fetch thread's
    to_end: str | None = None  # the lending thread's end_send reason

    @property
    def transfer_id(self) -> str:
        return self.order.params.transfer_id

    @property
    def done(self) -> bool:
        return self.stage is Stage.CLOSING and self.to_deliver is None and self.to_end is None


# How a payload on its way ends: (the decode engine gets the payload, the lending side's reason).
OUTCOMES = {
    "verified": (True, "acked"),
    "ack_lost": (True, "failed"),  # verified and acked, but the ack never arrived
    "corrupt": (False, "failed"),  # checksum mismatch: nack
    "broken": (False, "failed"),  # the connection broke mid-payload
}

# How a client turns a lease into a decode request ("as_is": unchanged).
MUTATIONS = (
    "as_is", "as_is", "as_is", "as_is", "plain", "identity", "forged_identity", "block_size",
    "fewer_blocks", "unknown_id", "other_prompt", "longer_prompt", "longer_more_blocks",
    "reused_id",
)  # fmt: skip


def decode_request(request_id: str, lent: Lent, mutation: str) -> Request:
    params, prompt = lent.params, list(lent.prompt)
    if mutation in ("longer_prompt", "longer_more_blocks"):
        prompt += [900, 901, 902, 903, 904]
    if mutation == "other_prompt":
        prompt[0] += 1000
    changes = {
        "identity": {"kv_identity": "model-z"},
        "forged_identity": {"kv_identity": MODEL_A},  # claims the decode engine's identity
        "block_size": {"block_size": 2 * BLOCK_SIZE},
        "fewer_blocks": {"num_blocks": max(1, params.num_blocks - 1)},
        "unknown_id": {"transfer_id": params.transfer_id + "-unknown"},
        "longer_more_blocks": {"num_blocks": params.num_blocks + 1},
    }.get(mutation, {})
    kv_transfer = None if mutation == "plain" else dataclasses.replace(params, **changes)
    return Request(
        request_id, prompt, SamplingParams(max_tokens=4), max_model_len=MAX_MODEL_LEN,
        arrival_time=0.0, kv_transfer=kv_transfer,
    )  # fmt: skip


class Cluster:
    """Both engines, the clients' leases and the network (see the module docstring)."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.prefill = PrefillEngine(self.clock, MODEL_A)
        self.decode = DecodeEngine(self.clock)
        self.handed_out: list[Lent] = []  # leases clients may bring to the decode engine
        self.brought: set[str] = set()  # transfer ids brought to the decode engine
        self.connections: list[Connection] = []
        self._ids = itertools.count()

    # ----- the engines -------------------------------------------------------------------------

    def prefill_request(self, prompt: list[int], status: RequestStatus, remote: bool) -> None:
        request = Request(
            f"p{next(self._ids)}", prompt, SamplingParams(max_tokens=1),
            max_model_len=MAX_MODEL_LEN, arrival_time=0.0,
            kv_transfer=RemoteDecode() if remote else None,
        )  # fmt: skip
        lent = self.prefill.run(request, status)
        if lent is not None:
            self.handed_out.append(lent)

    def decode_arrives(self, index: int, mutation: str, again: bool) -> None:
        """A client brings a lease (the newest first; again: maybe one brought before) to the
        decode engine."""
        leases = self.handed_out
        if not again:
            leases = [lent for lent in leases if lent.params.transfer_id not in self.brought]
        lent = (leases or self.handed_out)[-1 - index % len(leases or self.handed_out)]
        self.brought.add(lent.params.transfer_id)
        request_id = f"d{next(self._ids)}"
        if mutation == "reused_id":  # a client retries with the id of a request that ended
            live = {request.request_id for request in self.decode.requests()}
            ended = [old for old in self.decode.ended if old not in live]
            request_id = ended[-1] if ended else request_id
        self.decode.waiting.append(decode_request(request_id, lent, mutation))

    def decode_step(self, install_ok: bool) -> None:
        for order in self.decode.step(install_ok):
            self.connections.append(Connection(order, self.decode))

    # ----- the network -------------------------------------------------------------------------

    def ask(self, conn: Connection, reachable: bool, wait: bool = False) -> None:
        """The ask reaches the prefill engine (or the connection is refused: unreachable);
        its lending thread serves it as KVConnectorWorker._lend and _send_lease do. wait: an
        ask for a lease that the next step opens waits for it (begin_send's wait_s)."""
        assert conn.stage is Stage.ASKING
        prefill = self.prefill
        if wait and conn.transfer_id in prefill.lent and conn.transfer_id not in prefill.opened:
            return
        self._serve(conn, reachable)
        self._prune()

    def _serve(self, conn: Connection, reachable: bool) -> None:
        conn.stage = Stage.CLOSING
        notify = conn.decode_alive
        if not reachable:
            conn.to_deliver = (None, "unreachable") if notify else None
            return
        prefill, order = self.prefill, conn.order
        lease = prefill.leases.begin_send(conn.transfer_id)
        if lease is None:
            conn.to_deliver = (None, "refused: no such open lease") if notify else None
            return
        conn.prefill = prefill
        first = order.first_block  # the blocks before it are in the fetcher's cache already
        num_blocks = len(order.block_hashes)
        end = first + num_blocks
        problem = None
        if conn.decode.identity != prefill.identity:
            problem = "another model"
        elif not (num_blocks > 0 and end <= len(lease.block_ids)):
            problem = "more blocks than lent"
        elif order.block_hashes != lease.block_hashes[first:end]:
            problem = "other tokens"
        if problem is not None:
            conn.to_end = "refused"
            conn.to_deliver = (None, f"refused: {problem}") if notify else None
            return
        lent = prefill.lent[conn.transfer_id]
        assert lease.block_ids == lent.block_ids
        payload = tuple(prefill.memory[block_id] for block_id in lease.block_ids[first:end])
        assert payload == lent.content[first:end], "a lent block was overwritten"
        if not notify:  # the fetching engine died: the send breaks at once
            conn.to_end = "failed"
            return
        conn.stage, conn.payload = Stage.SENDING, payload

    def transfer(self, conn: Connection, outcome: str) -> None:
        """The payload reaches the fetching thread (OUTCOMES)."""
        assert conn.stage is Stage.SENDING and conn.decode_alive
        delivered, conn.to_end = OUTCOMES[outcome]
        conn.to_deliver = (conn.payload, "") if delivered else (None, outcome)
        conn.stage = Stage.CLOSING

    def fetch_thread_ends(self, conn: Connection) -> None:
        assert conn.to_deliver is not None and conn.decode_alive
        payload, reason = conn.to_deliver
        conn.to_deliver = None
        num_bytes = len(payload or ())
        conn.decode.fetches.deliver(conn.order.request_id, payload, reason, num_bytes)
        self._prune()

    def lending_thread_ends(self, conn: Connection) -> None:
        assert conn.to_end is not None and conn.prefill is not None
        reason, conn.to_end = conn.to_end, None
        conn.prefill.leases.end_send(conn.transfer_id, reason)
        self._prune()

    def _prune(self) -> None:
        self.connections = [conn for conn in self.connections if not conn.done]

    # ----- deaths ------------------------------------------------------------------------------

    def decode_dies(self) -> None:
        """The decode engine's process dies: its sockets close (a lease being sent fails; an
        ask already on its way may still reach the prefill engine). A fresh one replaces it."""
        for conn in self.connections:
            if conn.decode is self.decode:
                conn.decode_alive, conn.to_deliver = False, None
                if conn.stage is Stage.SENDING:
                    conn.stage, conn.to_end = Stage.CLOSING, "failed"
        self._prune()
        self.decode = DecodeEngine(self.clock)

    def prefill_dies(self, identity: str) -> None:
        """The prefill engine's process dies: a fetch it was sending to breaks. A fresh engine
        (of this identity) replaces it on the same endpoint; its leases are gone."""
        for conn in self.connections:
            if conn.prefill is self.prefill:
                conn.to_end = None
                if conn.stage is Stage.SENDING:
                    conn.stage, conn.to_deliver = Stage.CLOSING, (None, "broken: peer died")
        self._prune()
        self.prefill = PrefillEngine(self.clock, identity)

    # ----- invariants --------------------------------------------------------------------------

    def check(self) -> None:
        """The invariants that hold between any two events (see check_prefill, check_decode)."""
        self.prefill.kv.check_integrity()
        self.decode.kv.check_integrity()
        self.check_prefill()
        self.check_decode()

    def check_prefill(self) -> None:
        """Every lease not yet reported released holds its blocks (and they keep what they
        held when lent); a reported one holds nothing; a lease is SENDING exactly while a
        lending thread serves it."""
        prefill = self.prefill
        holds = prefill.kv._holds  # private: which holder references which blocks
        for transfer_id, lent in prefill.lent.items():
            held = holds.get(lease_holder(transfer_id))
            if transfer_id in prefill.released:
                assert held is None, f"released lease {transfer_id} still holds blocks"
                continue
            assert held is not None, f"lease {transfer_id} lost its blocks before its release"
            assert [block.block_id for block in held] == lent.block_ids
            assert all(block.ref_count > 0 for block in held)
            contents = tuple(prefill.memory[block_id] for block_id in lent.block_ids)
            assert contents == lent.content, f"lease {transfer_id}'s blocks were overwritten"
        serving = {
            conn.transfer_id
            for conn in self.connections
            if conn.prefill is prefill and (conn.stage is Stage.SENDING or conn.to_end)
        }
        for transfer_id, lease in prefill.leases._leases.items():
            assert transfer_id in prefill.opened and transfer_id not in prefill.released
            assert (lease.state is LeaseState.SENDING) == (transfer_id in serving), lease
        assert serving <= prefill.leases._leases.keys()

    def check_decode(self) -> None:
        """Every fetch not yet reported holds its target blocks and its request stays parked
        in the scheduler half; none is reported while its thread runs; a reported one holds
        its blocks only while its request waits to be admitted."""
        decode = self.decode
        holds = decode.kv._holds
        waiting = {request.request_id for request in decode.waiting}
        for request_id, order in decode.fetching.items():
            held = holds.get(fetch_holder(request_id))
            assert held is not None, f"fetch {request_id} lost its blocks while running"
            assert [block.block_id for block in held] == order.block_ids
        parked = decode.connector._parked  # (private) ordered, running, or aborted unreported
        for request_id in decode.fetching:
            assert request_id in parked, f"fetch {request_id} runs for no parked request"
        for holder in holds:  # a fetch's blocks, or the cached ones it keeps for its request
            request_id = holder.removeprefix("fetch:").removeprefix("keep:")
            if request_id not in decode.fetching and request_id not in parked:
                assert decode.last_result[request_id].ok and request_id in waiting, holder
        for request_id in decode.fetches._fetches:
            assert request_id in decode.fetching
        for conn in self.connections:
            if conn.decode is decode and (conn.stage is not Stage.CLOSING or conn.to_deliver):
                assert decode.fetching.get(conn.order.request_id) is conn.order, "reported early"

    # ----- the end -----------------------------------------------------------------------------

    def drain(self) -> None:
        """Finish everything: connections complete (verified), every decode request is admitted
        and finishes (or, without room, is aborted), then leases left unasked expire."""
        for _ in range(10):
            self.prefill.step()  # leases lent but not yet opened open before the asks
            for conn in list(self.connections):
                if conn.stage is Stage.ASKING:
                    self.ask(conn, reachable=True)
                if conn.stage is Stage.SENDING:
                    self.transfer(conn, "verified")
                if conn.to_deliver is not None:
                    self.fetch_thread_ends(conn)
                if conn.to_end is not None:
                    self.lending_thread_ends(conn)
            decode = self.decode
            for request in list(decode.running):
                decode.complete(request)
            self.decode_step(install_ok=True)
            for request in list(decode.waiting):
                outcome = decode.admit(request)
                if outcome == "running":
                    decode.complete(request)
                elif outcome == "waiting":
                    decode.cancel(request)
            if not (self.connections or decode.requests() or decode.connector.has_pending()):
                self.clock.advance(LEASE_TIMEOUT_S + 1.0)  # the leases nobody asks for expire
            self.prefill.step()
            self.check()
            if self.is_idle():
                return
        raise AssertionError("the drain did not finish every transfer")

    def is_idle(self) -> bool:
        prefill, decode = self.prefill, self.decode
        return not (
            self.connections
            or decode.requests()
            or prefill.connector.has_pending()
            or decode.connector.has_pending()
            or prefill.leases.num_open()
            or decode.fetches.num_active()
        )

    def check_drained(self) -> None:
        """After drain(): every lease opened and released once, every fetch reported once, no
        block in use on either side."""
        prefill, decode = self.prefill, self.decode
        assert prefill.opened == prefill.lent.keys() == prefill.released.keys()
        assert not decode.fetching and decode.num_started == len(decode.results)
        for engine in (prefill, decode):
            engine.kv.check_integrity()
            assert engine.kv.pool.usage == 0.0, engine.kv.pool.usage
            assert not engine.kv._holds
        stats = prefill.connector.stats
        num_released = stats.num_leases_acked + stats.num_leases_expired + stats.num_leases_failed
        assert stats.num_leases == num_released == len(prefill.lent)
        reasons = list(prefill.released.values())
        assert stats.num_leases_acked == reasons.count("acked")
        assert stats.num_leases_expired == reasons.count("expired")
