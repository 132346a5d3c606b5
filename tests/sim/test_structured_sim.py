"""Constrained decoding in the simulator: the grammar compile wait before the scheduler, the
per-row mask cost of each step, the compile thread and cache, and the flags."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from corral.core.messages import SchedulerOutput
from corral.sim.cli import add_arguments
from corral.sim.cli_feature_args import structured_sim_config_from_args
from corral.sim.config import ClusterSpec
from corral.sim.grammar_step import GrammarMaskPricer
from corral.sim.report import build_report, format_report
from corral.sim.structured import GrammarCompiles, StructuredSimConfig
from corral.workloads import ArrivalOptions, WorkloadOptions, build_workload
from tests.sim.helpers import instance, run, spec, workload

FREE = dict(compile_cold_s=0.0, compile_cached_s=0.0, mask_s_per_row=0.0)


def random_workload(num_requests: int = 40, rate: float | None = 20.0, samples: int = 1):
    arrival = ArrivalOptions("burst") if rate is None else ArrivalOptions("poisson", rate=rate)
    return build_workload(
        WorkloadOptions(
            dataset="random",
            num_requests=num_requests,
            input_len=60,
            output_len=30,
            range_ratio=0.5,
            seed=3,
            arrival=arrival,
            vocab_size=500,
            samples_per_request=samples,
        )
    )


def simulate(work, structured: StructuredSimConfig | None, **cluster_fields):
    cluster = ClusterSpec(
        (instance(max_num_seqs=8),), structured=structured, check_integrity=True, **cluster_fields
    )
    return run(cluster, work)


def token_times(result) -> list[tuple[str, list[float]]]:
    return [(r.request_id, list(r.token_times_s)) for r in result.records]


def test_free_grammars_change_nothing() -> None:
    work = random_workload()
    plain = simulate(work, None)
    free = simulate(work, StructuredSimConfig(fraction=0.5, num_grammars=3, **FREE))
    assert 0 < len(free.grammars) < len(work.specs)  # some requests are constrained, not all
    assert token_times(free) == token_times(plain)
    assert free.instances[0].num_steps == plain.instances[0].num_steps


@pytest.mark.parametrize("fraction,samples", [(1.0, 1), (0.5, 1), (1.0, 3)])
def test_mask_cost_is_rows_times_cost(fraction: float, samples: int) -> None:
    # All at once, FCFS: the schedule does not depend on step times, only the clock does.
    work = random_workload(24, rate=None, samples=samples)
    per_row_s, per_step_s = 1e-3, 5e-3
    plain = simulate(work, None)
    config = StructuredSimConfig(
        fraction=fraction, compile_cold_s=0.0, compile_cached_s=0.0, mask_s_per_row=per_row_s
    )
    masked = simulate(work, config)
    stats = masked.instances[0].structured_stats
    assert stats is not None
    # Every output token of a constrained request is one masked row.
    constrained_tokens = sum(
        s.num_sampled_output_tokens for s in work.specs if s.request_id in masked.grammars
    )
    assert stats.num_mask_rows == constrained_tokens > 0
    assert masked.instances[0].num_steps == plain.instances[0].num_steps
    added_s = masked.instances[0].busy_time_s - plain.instances[0].busy_time_s
    assert added_s == pytest.approx(constrained_tokens * per_row_s, rel=1e-9)
    # A fixed cost per step that samples any constrained row.
    with_step = simulate(work, dataclasses.replace(config, mask_s_per_step=per_step_s))
    step_stats = with_step.instances[0].structured_stats
    assert step_stats is not None and 0 < step_stats.num_mask_steps <= plain.instances[0].num_steps
    added_s = with_step.instances[0].busy_time_s - plain.instances[0].busy_time_s
    expected_s = constrained_tokens * per_row_s + step_stats.num_mask_steps * per_step_s
    assert added_s == pytest.approx(expected_s, rel=1e-9)


def test_compile_delay_shifts_ttft_cold_then_cached() -> None:
    # Far apart: each request runs alone, so its TTFT moves by its compile wait exactly.
    work = workload(*(spec(f"r{i}", 10.0 * i, 40, 5) for i in range(12)))
    cold_s, cached_s = 0.050, 0.002
    config = StructuredSimConfig(
        fraction=1.0,
        num_grammars=3,
        compile_cold_s=cold_s,
        compile_cached_s=cached_s,
        mask_s_per_row=0.0,
        seed=5,
    )
    plain = simulate(work, None)
    constrained = simulate(work, config)
    seen: set[int] = set()
    for before, after in zip(plain.records, constrained.records, strict=True):
        grammar = constrained.grammars[after.request_id]
        expected_s = cached_s if grammar in seen else cold_s
        seen.add(grammar)
        shift_s = after.token_times_s[0] - before.token_times_s[0]
        assert shift_s == pytest.approx(expected_s, abs=1e-12), after.request_id
        # Later tokens move by the same amount: decoding itself is not slower (mask cost 0).
        assert [t - shift_s for t in after.token_times_s] == pytest.approx(
            list(before.token_times_s), abs=1e-12
        )
    assert len(seen) > 1
    stats = constrained.instances[0].structured_stats
    assert stats is not None
    assert (stats.num_cold_compiles, stats.num_cached_compiles) == (len(seen), 12 - len(seen))


def test_compile_thread_queues_and_the_cache_is_lru() -> None:
    config = StructuredSimConfig(fraction=1.0, compile_cold_s=1.0, compile_cached_s=0.01)
    compiles = GrammarCompiles(config)
    # Same new grammar twice at t=0: the second waits behind the first, then hits the cache.
    assert compiles.submit(7, 0.0) == 1.0
    assert compiles.submit(7, 0.0) == pytest.approx(1.01)
    # Another grammar queues behind both; a cached one later needs no thread.
    assert compiles.submit(8, 0.5) == pytest.approx(2.01)
    assert compiles.submit(7, 1.5) == pytest.approx(1.51)
    assert (compiles.num_cold, compiles.num_cached) == (2, 2)
    assert compiles.max_wait_s == pytest.approx(1.51)
    # A cache of one grammar: A, B, A compiles A cold twice.
    small = GrammarCompiles(dataclasses.replace(config, max_num_cached=1))
    for now, grammar in [(0.0, 1), (10.0, 2), (20.0, 1)]:
        assert small.submit(grammar, now) == now + 1.0
    assert small.num_cold == 3
    # Two threads compile two grammars side by side.
    two = GrammarCompiles(dataclasses.replace(config, num_compile_threads=2))
    assert [two.submit(g, 0.0) for g in (1, 2, 3)] == [1.0, 1.0, 2.0]


def test_mask_rows_count_sampled_constrained_rows_and_drafts() -> None:
    pricer = GrammarMaskPricer(mask_s_per_row=1.0, mask_s_per_step=10.0)
    pricer.constrain("a")
    pricer.constrain("b")
    output = SchedulerOutput(
        [], [], {"a": 4, "b": 1, "c": 1}, 6, spec_token_ids={"a": [1, 2, 3], "c": [4]}
    )
    # a verifies 3 drafts (4 rows), b samples one row, c is unconstrained, d does not sample.
    assert pricer.step_time_s(output, ["a", "b", "c"]) == 10.0 + 5.0
    finished = SchedulerOutput([], [], {"b": 1}, 1, finished_request_ids={"a"})
    assert pricer.step_time_s(finished, ["a", "b"]) == 10.0 + 1.0
    assert pricer.step_time_s(SchedulerOutput([], [], {"b": 10}, 10), []) == 0.0
    assert (pricer.num_rows, pricer.num_steps) == (6, 2)


def test_assignment_is_seeded() -> None:
    work = random_workload(400)
    config = StructuredSimConfig(fraction=0.25, num_grammars=5, seed=1)
    first = config.assign(work.specs)
    assert first == config.assign(work.specs)
    assert first != dataclasses.replace(config, seed=2).assign(work.specs)
    assert 60 <= len(first) <= 140  # about a quarter of 400
    assert set(first.values()) == set(range(5))


def test_report_names_the_constrained_requests() -> None:
    work = random_workload()
    result = simulate(work, StructuredSimConfig(fraction=0.5, num_grammars=2))
    report = build_report(result)
    assert report.structured is not None
    assert report.structured.num_constrained_requests == len(result.grammars)
    assert report.structured.stats.num_cold_compiles == 2
    text = format_report(report)
    assert f"{len(result.grammars)} of {len(work.specs)} requests carry a grammar" in text
    assert report.to_dict()["structured"]["config"]["num_grammars"] == 2
    assert build_report(simulate(work, None)).structured is None


def test_disaggregated_legs_both_compile() -> None:
    work = random_workload(10)
    cluster = ClusterSpec(
        (instance(role="prefill"), instance(role="decode")),
        structured=StructuredSimConfig(fraction=1.0, compile_cold_s=0.01),
    )
    result = run(cluster, work)
    assert all(record.is_ok for record in result.records)
    stats = [i.structured_stats for i in result.instances]
    assert [s.num_submitted for s in stats if s is not None] == [10, 10]


def parse(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["run", *flags])


def test_flags_build_the_config() -> None:
    assert structured_sim_config_from_args(parse()) is None
    config = structured_sim_config_from_args(
        parse(
            "--structured-fraction",
            "0.3",
            "--structured-num-grammars",
            "4",
            "--structured-compile-ms",
            "114,0.034",
            "--structured-mask-us-per-row",
            "35.8",
            "--structured-seed",
            "9",
        )
    )
    expected = StructuredSimConfig(
        fraction=0.3,
        num_grammars=4,
        compile_cold_s=0.114,
        compile_cached_s=0.034e-3,
        mask_s_per_row=35.8e-6,
        seed=9,
    )
    assert config is not None
    assert dataclasses.asdict(config) == pytest.approx(dataclasses.asdict(expected), rel=1e-12)
    cold_only = structured_sim_config_from_args(
        parse("--structured-fraction", "1", "--structured-compile-ms", "0")
    )
    assert cold_only is not None and (cold_only.compile_cold_s, cold_only.compile_cached_s) == (
        0,
        0,
    )


@pytest.mark.parametrize(
    "flags,words",
    [
        (["--structured-fraction", "1.5"], ["--structured-fraction", "1.5"]),
        (["--structured-fraction", "-0.1"], ["--structured-fraction", "-0.1"]),
        (
            ["--structured-fraction", "0.5", "--structured-num-grammars", "0"],
            ["--structured-num-grammars", "0"],
        ),
        (
            ["--structured-fraction", "0.5", "--structured-compile-ms", "fast"],
            ["--structured-compile-ms", "'fast'"],
        ),
        (
            ["--structured-fraction", "0.5", "--structured-compile-ms", "1,2,3"],
            ["'1,2,3'"],
        ),
        (
            ["--structured-fraction", "0.5", "--structured-compile-ms", "-2"],
            ["'-2'"],
        ),
        (
            ["--structured-fraction", "0.5", "--structured-mask-us-per-row", "-1"],
            ["--structured-mask-us-per-row", "-1"],
        ),
        (
            ["--structured-fraction", "0.5", "--structured-mask-us-per-step", "nan"],
            ["--structured-mask-us-per-step", "nan"],
        ),
        (["--structured-compile-ms", "5"], ["--structured-compile-ms", "--structured-fraction"]),
    ],
)
def test_bad_flags_are_refused(flags: list[str], words: list[str]) -> None:
    with pytest.raises(ValueError) as error:
        structured_sim_config_from_args(parse(*flags))
    for word in words:
        assert word in str(error.value)


def test_config_refuses_bad_values() -> None:
    with pytest.raises(ValueError, match="got 2"):
        StructuredSimConfig(fraction=2)
    with pytest.raises(ValueError, match="-1"):
        StructuredSimConfig(fraction=0.5, compile_cold_s=-1.0)
    with pytest.raises(ValueError, match="compile threads"):
        StructuredSimConfig(fraction=0.5, num_compile_threads=0)
