"""Speculative decoding in the simulator: the real scheduler's speculation with drawn acceptance,
the verification chunk and the proposer priced by cost models."""

from __future__ import annotations

import dataclasses
import json

import pytest

from corral.config import SchedulerConfig, SpeculativeConfig
from corral.core.batch_shape import MAX_DECODE_ROW_TOKENS, BatchShape, BatchShapeCounter
from corral.core.kv_cache import KVCacheManager
from corral.core.scheduler import Scheduler
from corral.sim.config import ClusterSpec
from corral.sim.cost.profiled import ProfiledCostModel
from corral.sim.executor import SimExecutor
from corral.sim.report import build_report
from corral.sim.spec import (
    DEFAULT_DRAFT_COST_RATIO,
    SpecSimConfig,
    draft_loop_pass_times_s,
    draft_pass_shapes,
    make_spec_sim_config,
)
from corral.workloads import ArrivalOptions, WorkloadOptions, build_workload
from corral.workloads.tokens import PLACEHOLDER_TOKEN_ID
from tests.core.helpers import make_request
from tests.sim.helpers import instance, run

# Overhead-bound: 10 ms a step, 0.1 ms a token. Compute-bound: 1 ms a step, 1 ms a token.
OVERHEAD_BOUND = ProfiledCostModel(["intercept", "tokens"], [0.010, 0.0001])
COMPUTE_BOUND = ProfiledCostModel(["intercept", "tokens"], [0.001, 0.001])
PER_STEP_ONLY = ProfiledCostModel(["intercept"], [0.010])


def speculation(
    method: str = "ngram",
    k: int = 4,
    rule: str = "fixed",
    acceptance: tuple[float, ...] = (0.72,),
    **costs: float,
) -> SpecSimConfig:
    config = SpeculativeConfig(
        method=method,
        num_speculative_tokens=k,
        num_tokens_rule=rule,
        model="draft-model" if method == "draft" else None,
    )
    # Every request gets its proposal, free of cost, unless a test says otherwise.
    costs.setdefault("proposal_rate", 1.0)
    if method != "draft":
        costs.setdefault("propose_s_per_token", 0.0)
    spec = make_spec_sim_config(config, acceptance, **costs)  # type: ignore[arg-type]
    assert spec is not None
    return spec


def workload(num_requests: int = 24, output_len: int = 40, rate: float | None = 30.0, seed=0):
    arrival = ArrivalOptions("burst") if rate is None else ArrivalOptions("poisson", rate=rate)
    return build_workload(
        WorkloadOptions(
            dataset="random",
            num_requests=num_requests,
            input_len=50,
            output_len=output_len,
            range_ratio=0.5,
            seed=seed,
            arrival=arrival,
            vocab_size=500,
        )
    )


def simulate(spec: SpecSimConfig | None, work, cost_model=OVERHEAD_BOUND, seed=0, **fields):
    spec_instance = dataclasses.replace(instance(cost_model=cost_model, **fields), speculation=spec)
    cluster = ClusterSpec((spec_instance,), seed=seed, check_integrity=True)
    return run(cluster, work)


def make_scheduler(
    spec: SpecSimConfig, num_blocks: int = 256, **scheduler_fields: int
) -> Scheduler:
    return Scheduler(
        SchedulerConfig(**scheduler_fields),
        KVCacheManager(num_blocks, 16),
        4096,
        clock=lambda: 0,
        speculative=spec.config,
    )


def drive(scheduler: Scheduler, executor: SimExecutor, steps: list) -> None:
    """Run to completion, keeping (scheduler output, model output, shape) per step; check that the
    executor's counter follows every request exactly (tokens and computed tokens)."""
    while scheduler.has_unfinished_requests():
        scheduled = scheduler.schedule()
        model_output = executor.execute(scheduled)
        steps.append((scheduled, model_output, executor.last_batch))
        scheduler.update(scheduled, model_output)
        scheduler.kv.check_integrity()
        states = executor._counter._states
        for request_id, request in scheduler.requests.items():
            if request_id in states and request_id in scheduled.num_scheduled_tokens:
                assert states[request_id] == [request.num_tokens, request.num_computed_tokens]


def test_counter_settles_accepted_drafts():
    spec = speculation(k=3, acceptance=(1.0, 0.0))
    scheduler = make_scheduler(spec, num_blocks=64)
    executor = SimExecutor(OVERHEAD_BOUND, spec, seed=1)
    request = make_request(10, max_tokens=12, ignore_eos=True)
    scheduler.add_request(request)
    steps: list = []
    drive(scheduler, executor, steps)
    verified = [(s, m, b) for s, m, b in steps if s.spec_token_ids]
    assert verified
    for _, model_output, _ in verified:
        # Acceptance 1 then 0: exactly one of the drafts is accepted, two tokens a round.
        assert len(model_output.sampled_token_ids[request.request_id]) == 2
    # A verification chunk is its real token then its drafts, one decode row each, all sampled.
    scheduled, _, batch = verified[0]
    num_drafts = len(scheduled.spec_token_ids[request.request_id])
    assert scheduled.num_scheduled_tokens[request.request_id] == 1 + num_drafts
    context = request.num_prompt_tokens  # computed: the prompt; its first output token is not
    rows = [(1, context + row, True) for row in range(1 + num_drafts)]
    assert batch == BatchShape.of_chunks(rows)
    assert request.output_token_ids == [PLACEHOLDER_TOKEN_ID] * 12


def test_unsettled_counter_matches_a_settled_one():
    """The step log counts without settle(): it is put right from the next step's computed
    counts and sees every step's shape as the executor does."""
    spec = speculation(k=4)
    scheduler = make_scheduler(spec)
    executor = SimExecutor(OVERHEAD_BOUND, spec, seed=3)
    for num_prompt, max_tokens in [(30, 25), (7, 40), (60, 9), (3, 33)]:
        scheduler.add_request(make_request(num_prompt, max_tokens=max_tokens, ignore_eos=True))
    steps: list = []
    drive(scheduler, executor, steps)
    assert any(scheduled.spec_token_ids for scheduled, _, _ in steps)
    shadow = BatchShapeCounter()
    for scheduled, model_output, batch in steps:
        shape, sampled_ids = shadow.count(scheduled)
        assert shape == batch
        assert sampled_ids == list(model_output.sampled_token_ids)


def test_same_seed_same_metrics_with_speculation():
    spec = speculation("draft", k=3)
    first = build_report(simulate(spec, workload()))
    second = build_report(simulate(spec, workload()))
    assert first.summary.to_dict() == second.summary.to_dict()
    assert first.spec_decode == second.spec_decode and first.spec_decode is not None
    assert first.spec_decode.num_drafts > 0
    other = build_report(simulate(spec, workload(), seed=1))
    assert other.spec_decode != first.spec_decode


@pytest.mark.parametrize("method", ["ngram", "draft"])
@pytest.mark.parametrize("rule", ["fixed", "adaptive"])
def test_every_request_gets_exactly_its_tokens(method, rule):
    work = workload()
    result = simulate(speculation(method, k=5, rule=rule), work, num_blocks=128)
    for record, request_spec in zip(result.records, work):
        assert record.num_output_tokens == request_spec.num_output_tokens
        assert 1 <= len(record.token_times_s) <= request_spec.num_output_tokens
    assert result.instances[0].kv.usage == 0.0


def test_sampled_tokens_add_up_to_the_output_lengths():
    """Drafts, chunked prefills and preemptions (a small pool and budget) together."""
    spec = speculation("draft", k=6, acceptance=(0.9, 0.5))
    scheduler = make_scheduler(spec, num_blocks=20, max_num_batched_tokens=64)
    executor = SimExecutor(OVERHEAD_BOUND, spec)
    requests = [make_request(20 + 9 * i, max_tokens=5 + 7 * i, ignore_eos=True) for i in range(8)]
    for request in requests:
        scheduler.add_request(request)
    steps: list = []
    drive(scheduler, executor, steps)
    num_sampled = sum(len(ids) for _, m, _ in steps for ids in m.sampled_token_ids.values())
    assert num_sampled == sum(r.max_tokens for r in requests)
    assert all(r.output_token_ids == [PLACEHOLDER_TOKEN_ID] * r.max_tokens for r in requests)
    assert scheduler.kv.pool.num_free_blocks == scheduler.kv.pool.num_blocks
    assert any(s.spec_token_ids for s, _, _ in steps)
    assert any(s.preempted_request_ids for s, _, _ in steps)


def test_full_acceptance_gives_k_plus_one_tokens_a_round():
    work = workload(num_requests=8, output_len=60)
    off = simulate(None, work)
    on = simulate(speculation(k=4, acceptance=(1.0,)), work)
    stats = build_report(on).spec_decode
    assert stats is not None and stats.num_drafts > 0
    assert stats.num_accepted_tokens == stats.num_draft_tokens
    assert stats.mean_accepted_length == 1 + stats.num_draft_tokens / stats.num_drafts
    # Rounds are cut short only near a request's end: most carry all 4 drafts.
    assert stats.num_accepted_tokens_per_pos[3] > 0.8 * stats.num_drafts
    assert on.instances[0].num_steps < off.instances[0].num_steps / 2


@pytest.mark.parametrize("prefix_caching", [False, True])
def test_zero_acceptance_changes_no_step(prefix_caching):
    """With nothing accepted, drafts only add work at the end of a step's plan (from the budget
    left over, and KV blocks returned after the step): the scheduler makes the same steps and
    each request gets its tokens at the same steps as without speculation. With a cost model
    charging per step only (and a free proposer), even the times are the same."""
    work = workload(num_requests=16, output_len=30, rate=None)
    fields = dict(enable_prefix_caching=prefix_caching, cost_model=PER_STEP_ONLY)
    off = simulate(None, work, **fields)
    on = simulate(speculation(k=4, acceptance=(0.0,)), work, **fields)
    assert on.instances[0].num_steps == off.instances[0].num_steps
    assert [list(r.token_times_s) for r in on.records] == [
        list(r.token_times_s) for r in off.records
    ]
    stats = on.instances[0].scheduler.stats().spec_decode
    assert stats is not None and stats.num_draft_tokens > 0 and stats.num_accepted_tokens == 0
    # Priced per token, the same steps take longer: the rejected drafts were computed.
    off_priced = simulate(None, work, cost_model=COMPUTE_BOUND)
    on_priced = simulate(speculation(k=4, acceptance=(0.0,)), work, cost_model=COMPUTE_BOUND)
    assert on_priced.instances[0].num_steps == off_priced.instances[0].num_steps
    assert on_priced.instances[0].busy_time_s > off_priced.instances[0].busy_time_s


def _throughput(result) -> float:
    return build_report(result).summary.output_throughput


def _mean_k(result) -> float:
    stats = result.instances[0].scheduler.stats().spec_decode
    return stats.num_planned_tokens / max(stats.num_planned_requests, 1)


def test_adaptive_rule_backs_off_on_a_compute_bound_batch():
    """48 requests decoding, 1 ms a token: a draft token costs what a request's token costs,
    and yields less. Fixed K loses throughput; the adaptive rule speculates only when it probes
    and keeps speculation-off's throughput."""
    work = workload(num_requests=48, output_len=200, rate=None)
    fields = dict(cost_model=COMPUTE_BOUND, num_blocks=1024, max_num_seqs=64)
    off = simulate(None, work, **fields)
    fixed = simulate(speculation(rule="fixed", propose_s_per_token=1e-4), work, **fields)
    adaptive = simulate(speculation(rule="adaptive", propose_s_per_token=1e-4), work, **fields)
    fixed_stats = fixed.instances[0].scheduler.stats().spec_decode
    adaptive_stats = adaptive.instances[0].scheduler.stats().spec_decode
    assert adaptive_stats.num_planned_tokens < fixed_stats.num_planned_tokens / 20
    assert _throughput(fixed) < 0.8 * _throughput(off)
    assert _throughput(adaptive) >= 0.99 * _throughput(off)


@pytest.mark.parametrize("method", ["ngram", "draft"])
def test_adaptive_rule_speculates_for_a_lone_request_when_steps_are_overhead(method):
    """One request, 10 ms a step and 0.1 ms a token: a draft token is almost free to verify.
    (The draft model here costs 0.1 of the target a pass.)"""
    work = workload(num_requests=1, output_len=300, rate=None)
    off = simulate(None, work)
    costs = dict(draft_cost_ratio=0.1) if method == "draft" else {}
    adaptive = simulate(speculation(method, k=6, rule="adaptive", **costs), work)
    assert _mean_k(adaptive) > 2
    assert _throughput(adaptive) > 1.5 * _throughput(off)


def test_drawn_acceptance_follows_the_per_position_model():
    spec = speculation(k=4, acceptance=(0.9, 0.6, 0.3))
    executor = SimExecutor(OVERHEAD_BOUND, spec, seed=5)
    num_rounds = 20_000
    counts = [0] * 5
    for _ in range(num_rounds):
        counts[executor.num_accepted(4)] += 1
    # P(accepted = j) = a_1 ... a_j (1 - a_{j+1}), a_4 = a_3 (the last value holds on)
    expected = [0.1, 0.9 * 0.4, 0.9 * 0.6 * 0.7, 0.9 * 0.6 * 0.3 * 0.7, 0.9 * 0.6 * 0.3 * 0.3]
    for count, p in zip(counts, expected):
        assert abs(count / num_rounds - p) < 0.01
    mean_tokens = 1 + sum(j * count for j, count in enumerate(counts)) / num_rounds
    assert mean_tokens == pytest.approx(spec.expected_tokens_per_round(4), abs=0.02)


def test_draft_passes_catch_up_then_decode():
    shapes = draft_pass_shapes([(3, 1, 100), (1, 40, 40), (2, 2, 50)])
    assert len(shapes) == 3
    # A catch-up of at most 8 tokens runs as decode rows (only the last is sampled).
    first = [(1, 99, True), (40, 0, True), (1, 48, False), (1, 49, True)]
    assert shapes[0] == BatchShape.of_chunks(first)
    assert shapes[1] == BatchShape.of_chunks([(1, 100, True), (1, 50, True)])
    assert shapes[2] == BatchShape.of_chunks([(1, 101, True)])
    assert draft_pass_shapes([]) == []


def test_draft_cost_priced_by_its_own_model_or_a_ratio():
    scheduler_args = (SchedulerConfig(), KVCacheManager(64, 16), 4096)
    # The draft's first pass computes the whole verified sequence: 10 prompt tokens + 1.
    first_pass_s = OVERHEAD_BOUND.step_time_s(BatchShape.of_chunks([(11, 0, True)]))
    for costs, expected_s in [
        (dict(draft_cost_ratio=0.5), 0.5 * first_pass_s),
        (dict(draft_cost_model=PER_STEP_ONLY), 0.010),
        (dict(draft_cost_ratio=0.0, propose_s_per_step=0.002, propose_s_per_token=0.001), 0.003),
    ]:
        spec = speculation("draft", k=1, acceptance=(0.5,), **costs)
        scheduler = Scheduler(*scheduler_args, clock=lambda: 0, speculative=spec.config)
        executor = SimExecutor(OVERHEAD_BOUND, spec)
        scheduler.add_request(make_request(10, max_tokens=5, ignore_eos=True))
        output = scheduler.schedule()  # the prefill; the controller asks for one draft token
        assert list(output.num_spec_tokens_to_propose.values()) == [1]
        model_output = executor.execute(output)
        assert model_output.propose_time_s == pytest.approx(expected_s)
        target_s = OVERHEAD_BOUND.step_time_s(executor.last_batch)
        assert model_output.step_time_s == pytest.approx(target_s + expected_s)
        # Timed as catch-up as the engine's draft proposer times it: a first pass with a
        # prompt-length chunk (here 11 tokens run as decode rows: none).
        assert model_output.catchup_time_s == 0.0
    # A 40-token prompt's catch-up is a prefill chunk: its pass is the catch-up.
    spec = speculation("draft", k=1, acceptance=(0.5,), draft_cost_model=PER_STEP_ONLY)
    scheduler = Scheduler(*scheduler_args, clock=lambda: 0, speculative=spec.config)
    executor = SimExecutor(OVERHEAD_BOUND, spec)
    scheduler.add_request(make_request(40, max_tokens=5, ignore_eos=True))
    model_output = executor.execute(scheduler.schedule())
    assert model_output.catchup_time_s == pytest.approx(0.010) == model_output.propose_time_s


def test_the_draft_loop_prices_its_call_once_and_rows_beyond_one_by_the_model():
    """draft_loop_s: a round is the loop's call with its first pass, each further pass, and the
    draft model's cost of rows beyond one (tokens and context here), not its fixed step cost or
    its per-sampled-request cost once a pass."""
    model = ProfiledCostModel(
        ["intercept", "tokens", "decode_context_tokens", "sampled_requests"],
        [0.010, 0.0001, 0.000001, 0.001],
    )
    one = draft_pass_shapes([(3, 1, 100)])  # one request: three one-row passes
    times_s = draft_loop_pass_times_s(model, one, (0.0004, 0.0001))
    assert times_s == pytest.approx([0.0004, 0.0001, 0.0001])
    two = draft_pass_shapes([(2, 1, 100), (2, 1, 300)])  # two rows a pass, two passes
    # Beyond a row at the mean context, in each pass: one more row (0.0001) and its keys (pass 1:
    # 100 + 300 against 200, pass 2: 101 + 301 against 201); no sampling cost for it.
    expected = [0.0004 + 0.0001 + 200 * 0.000001, 0.0001 + 0.0001 + 201 * 0.000001]
    assert draft_loop_pass_times_s(model, two, (0.0004, 0.0001)) == pytest.approx(expected)
    assert draft_loop_pass_times_s(model, [], (0.0004, 0.0001)) == []
    with pytest.raises(ValueError, match="draft cost model"):
        speculation("draft", draft_cost_ratio=0.5, draft_loop_s=(0.0004, 0.0001))
    with pytest.raises(ValueError, match="two seconds"):
        speculation("draft", draft_cost_model=model, draft_loop_s=(0.0004, -1.0))


def test_proposals_that_do_not_come_are_not_verified():
    work = workload(num_requests=8, output_len=60)
    every = simulate(speculation(k=3), work).instances[0].scheduler.stats().spec_decode
    some = simulate(speculation(k=3, proposal_rate=0.3), work)
    stats = some.instances[0].scheduler.stats().spec_decode
    # Rounds per request-step asked to propose (the round comes one step later).
    assert every.num_drafts > 0.9 * every.num_planned_requests
    assert 0.2 < stats.num_drafts / stats.num_planned_requests < 0.4
    assert [r.num_output_tokens for r in some.records] == [s.num_output_tokens for s in work]


def test_bad_acceptance_is_refused():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        speculation(acceptance=(1.2,))
    with pytest.raises(ValueError, match="only used by method 'draft'"):
        speculation("ngram", draft_cost_ratio=0.3)
    with pytest.raises(ValueError, match="proposal_rate"):
        speculation("ngram", proposal_rate=-0.1)


def test_simulate_run_flags_and_report(tmp_path, capsys):
    from tests.sim.test_cli_and_profile import main

    out = tmp_path / "report.json"
    base = ["simulate", "run", "--dataset", "random", "--num-requests", "16", "--input-len"]
    base += ["100", "--output-len", "40", "--request-rate", "10", "--model", "smollm-135m"]
    spec_flags = ["--speculative-method", "draft", "--num-speculative-tokens", "3"]
    spec_flags += ["--speculative-tokens-rule", "fixed", "--spec-acceptance", "0.9,0.6"]
    assert main(base + spec_flags + ["--result-json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "speculative decoding:" in text and "mean accepted length" in text
    document = json.loads(out.read_text())
    stats = document["spec_decode"]
    assert stats["num_drafts"] > 0 and 0 < stats["acceptance_rate"] < 1
    assert stats["mean_accepted_length"] == 1 + stats["num_accepted_tokens"] / stats["num_drafts"]
    assert document["instances"][0]["spec_decode"] == stats
    assert document["speculation"]["acceptance"] == [0.9, 0.6]
    assert document["speculation"]["draft_cost_ratio"] == DEFAULT_DRAFT_COST_RATIO
    assert main(base + ["--speculative-method", "ngram", "--spec-acceptance", "1.5"]) == 2
    # The draft loop's costs: with a draft profile only, two numbers in ms.
    profile = tmp_path / "draft.json"
    PER_STEP_ONLY.save(profile)
    loop = ["--spec-draft-profile", str(profile), "--spec-draft-loop-ms", "0.4,0.05"]
    assert main(base + spec_flags + loop + ["--result-json", str(out)]) == 0
    assert json.loads(out.read_text())["speculation"]["draft_loop_s"] == [0.0004, 0.00005]
    assert main(base + spec_flags + ["--spec-draft-loop-ms", "0.4,0.05"]) == 2  # no profile
    assert main(base + spec_flags + loop[:2] + ["--spec-draft-loop-ms", "0.4"]) == 2


def test_decode_row_limit_is_the_executors():
    from corral.core.batch_shape import MAX_DECODE_ROW_TOKENS
    from corral.model import step_inputs

    assert MAX_DECODE_ROW_TOKENS == step_inputs.MAX_DECODE_ROW_TOKENS


def test_verification_chunks_stay_within_decode_rows():
    """The scheduler caps drafts so that a verification chunk always runs as decode rows (the
    step-cost fit prices draft tokens as row tokens)."""
    spec = speculation(k=15, acceptance=(1.0,))
    scheduler = make_scheduler(spec)
    executor = SimExecutor(OVERHEAD_BOUND, spec)
    request = make_request(10, max_tokens=60, ignore_eos=True)
    scheduler.add_request(request)
    steps: list = []
    drive(scheduler, executor, steps)
    verifying = [step for step in steps if step[0].spec_token_ids]
    assert verifying
    for scheduled, _, batch in verifying:
        num_tokens = scheduled.num_scheduled_tokens[request.request_id]
        assert num_tokens <= MAX_DECODE_ROW_TOKENS
        assert batch.num_prefill_tokens == 0
    assert max(s[0].num_scheduled_tokens[request.request_id] for s in verifying) == 16
