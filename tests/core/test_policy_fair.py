"""Virtual Token Counter fairness: the service gap between two backlogged clients stays within
the paper's bound while one of them floods, and a well-behaved client keeps its latency. FCFS,
for contrast, breaks both (so the checks can fail)."""

from __future__ import annotations

from corral.core.policies import make_policy
from corral.request import RequestStatus
from tests.core.policy_driver import Driver, VirtualClock, job, make_policy_scheduler

NUM_BLOCKS, BLOCK_SIZE, PROMPT, OUTPUT = 16, 4, 8, 8
INPUT_WEIGHT, OUTPUT_WEIGHT = 1.0, 2.0
# The VTC bound 2U, U = max(input weight * longest prompt, output weight * KV capacity).
BOUND = 2 * max(INPUT_WEIGHT * PROMPT, OUTPUT_WEIGHT * NUM_BLOCKS * BLOCK_SIZE)


def serve(policy: str, requests) -> tuple[Driver, list[tuple[dict[str, float], set[str]]]]:
    """Run to the end. Returns the driver and, per step, each client's cumulative weighted
    service (prefill tokens * input weight + sampled tokens * output weight) and the clients
    that had waiting requests when the step was scheduled."""
    clock = VirtualClock()
    scheduler = make_policy_scheduler(
        policy, clock, num_blocks=NUM_BLOCKS, block_size=BLOCK_SIZE, max_num_seqs=4
    )
    driver = Driver(scheduler, clock)
    driver.submit(*requests)
    client_of = {r.request_id: r.client_id for r in requests}
    service = {"flood": 0.0, "polite": 0.0}
    history = []
    while driver.pending or scheduler.has_unfinished_requests():
        driver._admit_arrivals()
        backlogged = {
            r.client_id for r in scheduler.requests.values() if r.status != RequestStatus.RUNNING
        }
        before = {
            rid: (r.num_computed_tokens, r.num_prompt_tokens)
            for rid, r in scheduler.requests.items()
        }
        driver.step()
        for request_id, num_tokens in driver.fake.steps[-1].num_scheduled_tokens.items():
            computed, num_prompt = before[request_id]
            num_input = min(num_tokens, max(num_prompt - computed, 0))
            service[client_of[request_id]] += INPUT_WEIGHT * num_input
        for request_id in driver.run_info.sampled_per_step[-1]:
            service[client_of[request_id]] += OUTPUT_WEIGHT
        history.append((dict(service), backlogged))
    return driver, history


def max_gap_while_both_backlogged(policy: str) -> float:
    flood = [job(0.0, OUTPUT, num_prompt_tokens=PROMPT, client_id="flood") for _ in range(60)]
    # Different shapes (same KV footprint), so that the two clients' service does not move in
    # lockstep.
    polite = [job(0.0, 12, num_prompt_tokens=4, client_id="polite") for _ in range(20)]
    _, history = serve(policy, flood + polite)  # the flood is ahead in arrival order
    gaps = []
    for service, backlogged in history:
        if backlogged != {"flood", "polite"}:
            break
        gaps.append(abs(service["flood"] - service["polite"]))
    assert len(gaps) > 20, "both clients should stay backlogged for a while"
    return max(gaps)


def test_vtc_keeps_the_service_gap_within_its_bound():
    assert max_gap_while_both_backlogged("fair") <= BOUND
    assert max_gap_while_both_backlogged("fcfs") > BOUND


def polite_latencies(policy: str) -> list[float]:
    flood = [job(0.0, OUTPUT, num_prompt_tokens=PROMPT, client_id="flood") for _ in range(60)]
    polite = [
        job(10.0 * i + 0.5, OUTPUT, num_prompt_tokens=PROMPT, client_id="polite") for i in range(8)
    ]
    driver, _ = serve(policy, flood + polite)
    return [driver.run_info.finish_s[r.request_id] - r.arrival_time for r in polite]


def test_a_well_behaved_client_is_served_promptly_while_another_floods():
    fair, fcfs = polite_latencies("fair"), polite_latencies("fcfs")
    # Under VTC a polite request waits at most for one seat to free (a flood request takes 8
    # steps), then takes its own 8 steps.
    assert max(fair) <= 8 + 8 + 1
    assert sum(fcfs) / len(fcfs) > 3 * sum(fair) / len(fair)


def test_a_returning_client_is_lifted_to_the_least_backlogged_counter():
    policy = make_policy("fair")
    first = job(0.0, 4, num_prompt_tokens=10, client_id="a")
    policy.add_waiting(first)
    assert policy.pop_waiting() is first
    assert policy.counters["a"] == 10.0  # input tokens charged at admission
    policy.add_waiting(job(1.0, 4, num_prompt_tokens=5, client_id="b"))
    policy.add_waiting(job(1.0, 4, num_prompt_tokens=5, client_id="c"))
    # b and c arrived while nobody waited: lifted to the last served counter, 10.
    assert policy.counters["b"] == policy.counters["c"] == 10.0
    policy.pop_waiting()  # b: 15
    late = job(2.0, 4, client_id="d")
    policy.add_waiting(late)  # the least backlogged counter is c's 10
    assert policy.counters["d"] == 10.0
