"""Property tests of the KV transfer ownership protocol (issue 18): a transfer is a lease; the
prefill engine keeps the blocks until the decode engine acknowledges a verified copy or the
lease times out; the decode engine refuses a copy of another layout, model or checksum and
recomputes; aborts and process deaths on either side release both ends.

hypothesis drives two engines' real control planes (protocol_model.py, protocol_cluster.py)
through random interleavings of lending, parking, asks, payloads, acks, thread ends, installs,
admissions, preemptions, aborts, timeouts and deaths. After every event both KV caches pass
check_integrity, lent blocks keep their contents while lent, running fetches keep their target
blocks, nothing is reported twice and every prefix hit holds the tokens it stands for; at the
end a drain finishes everything and both pools are empty.
"""

from __future__ import annotations

from typing import TypeVar

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from corral.request import RequestStatus
from tests.kv_transfer.protocol_cluster import MUTATIONS, OUTCOMES, Cluster, Connection, Stage
from tests.kv_transfer.protocol_model import BLOCK_SIZE, LEASE_TIMEOUT_S, MODEL_A, MODEL_B

# Prompts are prefixes of these: the first two share their first two blocks.
PROMPTS = (
    list(range(1, 20)),
    [*range(1, 9), *range(50, 61)],
    list(range(100, 119)),
)
FINISHES = (
    RequestStatus.FINISHED_LENGTH, RequestStatus.FINISHED_LENGTH,
    RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_ABORTED,
)  # fmt: skip
INDEX = st.integers(min_value=0, max_value=1_000)


T = TypeVar("T")


def pick(items: list[T], index: int) -> T:
    return items[index % len(items)]


class TransferProtocol(RuleBasedStateMachine):
    """A prefill engine, a decode engine and the network between them (Cluster); every rule
    is one event, the invariant is Cluster.check, teardown drains and checks both pools."""

    def __init__(self) -> None:
        super().__init__()
        self.cluster = Cluster()
        # Events that wipe the state: at most one death, drain and timeout per run.
        self.num_deaths = self.num_drains = self.num_timeouts = 0

    @initialize(
        prompts=st.lists(st.sampled_from(PROMPTS), min_size=1, max_size=3),
        length=st.integers(min_value=BLOCK_SIZE, max_value=len(PROMPTS[0])),
        num_fetching=st.integers(min_value=0, max_value=3),
    )
    def leases_lent(self, prompts: list[list[int]], length: int, num_fetching: int) -> None:
        """A start with leases open, num_fetching of them being fetched (asks on their way)."""
        cluster = self.cluster
        for prompt in prompts:
            cluster.prefill_request(prompt[:length], RequestStatus.FINISHED_LENGTH, True)
        cluster.prefill.step()
        for _ in range(min(num_fetching, len(cluster.handed_out))):
            cluster.decode_arrives(0, "as_is", again=False)
            cluster.decode.admit(cluster.decode.waiting[-1])
        cluster.decode_step(install_ok=True)

    # ----- the prefill engine ------------------------------------------------------------------

    @rule(
        prompt=st.sampled_from(PROMPTS),
        length=st.integers(min_value=1, max_value=len(PROMPTS[0])),
        status=st.sampled_from(FINISHES),
        remote=st.sampled_from((True, True, True, False)),
    )
    def prefill_request_runs(
        self, prompt: list[int], length: int, status: RequestStatus, remote: bool
    ) -> None:
        before = len(self.cluster.handed_out)
        self.cluster.prefill_request(prompt[:length], status, remote)
        if len(self.cluster.handed_out) > before:
            event("lease lent")

    @rule()
    def prefill_steps(self) -> None:
        self.cluster.prefill.step()

    @rule(seconds=st.sampled_from((0.1, 0.5, 1.0)))
    def time_passes(self, seconds: float) -> None:
        self.cluster.clock.advance(seconds)

    @precondition(lambda self: self.num_timeouts == 0)
    @rule(now=st.sampled_from((False, False, True)))
    def leases_time_out(self, now: bool) -> None:
        """Past every open lease's deadline (they expire at the prefill engine's next step);
        not now: not yet."""
        if now:
            self.num_timeouts += 1
            self.cluster.clock.advance(LEASE_TIMEOUT_S)

    # ----- the decode engine -------------------------------------------------------------------

    @precondition(lambda self: self.cluster.handed_out)
    @rule(
        client=st.tuples(
            INDEX,
            st.sampled_from(MUTATIONS),
            st.sampled_from((False, False, False, True)),
            st.sampled_from((True, True, False)),
        )
    )
    def decode_request_arrives(self, client: tuple[int, str, bool, bool]) -> None:
        """A client brings a lease (index, newest first; again: maybe one brought before) to
        the decode engine, maybe changed (MUTATIONS); admit_now: the next step admits it."""
        index, mutation, again, admit_now = client
        decode = self.cluster.decode
        self.cluster.decode_arrives(index, mutation, again)
        if admit_now:
            event(f"admission: {decode.admit(decode.waiting[-1])}")

    @precondition(lambda self: self.cluster.decode.waiting)
    @rule(index=INDEX)
    def decode_admits(self, index: int) -> None:
        decode = self.cluster.decode
        request = pick(decode.waiting, index)
        result = decode.last_result.get(request.request_id)
        outcome = decode.admit(request)
        event(f"admission: {outcome}")
        if outcome == "running" and result is not None and result.ok:
            event(f"admitted after its fetch, {request.num_computed_tokens} tokens hit")

    @rule(install_ok=st.sampled_from((True, True, True, False)))
    def decode_steps(self, install_ok: bool) -> None:
        self.cluster.decode_step(install_ok)

    @precondition(lambda self: self.cluster.decode.running)
    @rule(index=INDEX, preempted=st.sampled_from((False, False, True)))
    def decode_request_runs(self, index: int, preempted: bool) -> None:
        """A running request finishes, or is preempted (recompute) and queued again."""
        request = pick(self.cluster.decode.running, index)
        if preempted:
            self.cluster.decode.preempt(request)
        else:
            self.cluster.decode.complete(request)

    @precondition(lambda self: self.cluster.decode.requests())
    @rule(index=INDEX)
    def decode_request_aborted(self, index: int) -> None:
        decode = self.cluster.decode
        request = pick(decode.requests(), index)
        event(f"abort while {'parked' if decode.connector.is_parked(request) else 'not parked'}")
        decode.cancel(request)

    # ----- the network -------------------------------------------------------------------------

    @precondition(lambda self: self.cluster.connections)
    @rule(
        move=st.tuples(  # one argument: hypothesis favours rules with fewer arguments
            INDEX,
            st.sampled_from(("waits", "waits", "served", "unreachable")),
            st.sampled_from(sorted(OUTCOMES)),
            st.booleans(),
        )
    )
    def connection_progresses(self, move: tuple[int, str, str, bool]) -> None:
        """One step of one connection (index): its ask arrives (or waits for its lease to
        open, or cannot connect), its payload arrives (outcome), or one of its two threads ends
        (either may end first)."""
        index, ask, outcome, fetch_side_first = move
        cluster = self.cluster
        conn = pick(cluster.connections, index)
        if conn.stage is Stage.ASKING:
            cluster.ask(conn, reachable=ask != "unreachable", wait=ask == "waits")
            if conn.stage is Stage.ASKING:
                return  # waiting for the lease to open
            reason = conn.to_deliver[1] if conn.to_deliver else conn.to_end
            event(f"ask: {conn.stage.value} {reason or ''}".strip())
        elif conn.stage is Stage.SENDING:
            cluster.transfer(conn, outcome)
            event(f"payload: {outcome}")
        elif conn.to_deliver is not None and (fetch_side_first or conn.to_end is None):
            cluster.fetch_thread_ends(conn)
        else:
            assert conn.to_end is not None and conn.prefill is not None
            if conn.prefill.leases._leases[conn.transfer_id].expire_after_send:
                event("a lease expired while it was being sent")
            cluster.lending_thread_ends(conn)

    # ----- both --------------------------------------------------------------------------------

    @precondition(lambda self: self.num_deaths == 0)
    @rule(engine=st.sampled_from(("none", "none", "none", "decode", "prefill", "prefill b")))
    def engine_dies(self, engine: str) -> None:
        """The decode or the prefill engine dies (a fresh one replaces it; "prefill b": of
        another model); "none": not yet."""
        if engine == "none":
            return
        self.num_deaths += 1
        if engine == "decode":
            self.cluster.decode_dies()
        else:
            self.cluster.prefill_dies(MODEL_B if engine == "prefill b" else MODEL_A)

    @precondition(lambda self: self.num_drains == 0)
    @rule()
    def drain(self) -> None:
        self.num_drains += 1
        self.cluster.drain()
        self.cluster.check_drained()

    @invariant()
    def protocol_invariants(self) -> None:
        self.cluster.check()

    def teardown(self) -> None:
        self.cluster.drain()
        self.cluster.check_drained()
        for reason in self.cluster.prefill.released.values():
            event(f"lease released: {reason}")
        for result in self.cluster.decode.results:
            event(f"fetch: {'ok' if result.ok else result.reason.partition(':')[0]}")


TestTransferProtocol = TransferProtocol.TestCase
TestTransferProtocol.settings = settings(max_examples=200, stateful_step_count=50, deadline=None)


# ----- worked examples -----------------------------------------------------------------------


def lend(cluster: Cluster, length: int = 13) -> None:
    cluster.prefill_request(PROMPTS[0][:length], RequestStatus.FINISHED_LENGTH, remote=True)
    cluster.prefill.step()  # the lease opens


def park(cluster: Cluster, mutation: str = "as_is") -> Connection:
    cluster.decode_arrives(0, mutation, again=True)  # the newest lease
    assert cluster.decode.admit(cluster.decode.waiting[-1]) == "parked"
    cluster.decode_step(install_ok=True)
    return cluster.connections[-1]


def finish(cluster: Cluster, conn: Connection) -> None:
    cluster.fetch_thread_ends(conn)
    cluster.lending_thread_ends(conn)
    cluster.decode_step(install_ok=True)
    cluster.prefill.step()
    cluster.check()


def test_a_verified_copy_is_acked_and_becomes_prefix_hits():
    cluster = Cluster()
    lend(cluster)
    conn = park(cluster)
    cluster.ask(conn, reachable=True)
    cluster.transfer(conn, "verified")
    finish(cluster, conn)
    assert cluster.prefill.released == {conn.transfer_id: "acked"}
    request = cluster.decode.waiting[0]
    assert cluster.decode.admit(request) == "running"
    assert request.num_computed_tokens == 3 * BLOCK_SIZE  # all three lent blocks hit
    cluster.drain()
    cluster.check_drained()


def test_a_lease_expiring_during_its_send_is_released_when_the_send_ends():
    cluster = Cluster()
    lend(cluster)
    conn = park(cluster)
    cluster.ask(conn, reachable=True)
    cluster.clock.advance(LEASE_TIMEOUT_S + 1.0)
    cluster.prefill.step()  # ordered to expire while SENDING: the blocks stay lent
    cluster.check()
    assert not cluster.prefill.released
    cluster.transfer(conn, "corrupt")
    finish(cluster, conn)
    assert cluster.prefill.released == {conn.transfer_id: "failed"}
    assert cluster.decode.last_result[conn.order.request_id].reason == "corrupt"
    cluster.drain()
    cluster.check_drained()


def test_an_abort_during_the_fetch_drops_the_copy_and_both_ends_let_go():
    cluster = Cluster()
    lend(cluster)
    conn = park(cluster)
    cluster.decode.cancel(cluster.decode.parked[conn.order.request_id])
    cluster.decode_step(install_ok=True)  # the cancel reaches the worker half
    cluster.ask(conn, reachable=True)
    cluster.transfer(conn, "verified")
    finish(cluster, conn)
    assert cluster.decode.last_result[conn.order.request_id].reason == "cancelled"
    assert cluster.prefill.released == {conn.transfer_id: "acked"}
    cluster.drain()
    cluster.check_drained()


@pytest.mark.parametrize("ask_arrives", [False, True])
def test_a_dead_decode_engines_lease_is_released(ask_arrives):
    cluster = Cluster()
    lend(cluster)
    conn = park(cluster)
    cluster.decode_dies()
    if not ask_arrives:
        cluster.ask(conn, reachable=False)  # died before connecting
    cluster.drain()  # an ask that still arrives begins a send that fails at once
    cluster.check_drained()
    assert list(cluster.prefill.released.values()) == ["failed" if ask_arrives else "expired"]


def test_a_lease_of_another_model_is_refused_and_the_prompt_recomputed():
    cluster = Cluster()
    cluster.prefill_dies(MODEL_B)  # the prefill engine now serves another model
    lend(cluster)
    conn = park(cluster, "forged_identity")  # the params claim the decode engine's model
    cluster.ask(conn, reachable=True)
    finish(cluster, conn)
    assert cluster.prefill.released == {conn.transfer_id: "refused"}
    request = cluster.decode.waiting[0]
    assert cluster.decode.admit(request) == "running"
    assert request.num_computed_tokens == 0
    cluster.drain()
    cluster.check_drained()


def test_an_aborted_requests_id_reused_while_its_fetch_runs():
    """Regression: the namesake's try_park took the fetch holder still in use (ValueError,
    blocks leaked), and the old fetch's report dropped the namesake's fetched-once mark (a
    preempted namesake was parked again and never requeued)."""
    cluster = Cluster()
    lend(cluster)
    conn = park(cluster)
    decode = cluster.decode
    decode.cancel(decode.parked[conn.order.request_id])
    cluster.decode_arrives(0, "reused_id", again=True)
    namesake = decode.waiting[-1]
    assert namesake.request_id == conn.order.request_id
    assert decode.admit(namesake) == "running"  # computed locally: its holder is busy
    decode.preempt(namesake)
    cluster.ask(conn, reachable=True)
    cluster.transfer(conn, "verified")
    finish(cluster, conn)  # the old fetch is reported cancelled
    assert decode.admit(namesake) == "running"  # fetched for at most once
    cluster.drain()
    cluster.check_drained()
