"""The reasoning preset: GSM8K questions, lognormal long outputs capped by the context, n samples
per request (8 by default), and samples_per_request on any dataset."""

from __future__ import annotations

import statistics

import pytest

from corral.workloads import WorkloadOptions, build_workload
from corral.workloads.data import gsm8k_records
from corral.workloads.datasets.reasoning import INSTRUCTION


@pytest.fixture(autouse=True)
def _gsm8k(tiny_gsm8k_dir):
    """The preset reads GSM8K's test split: a small one of the tests' own."""


def test_reasoning_defaults_eight_samples_of_gsm8k_questions():
    work = build_workload(WorkloadOptions(dataset="reasoning", num_requests=200))
    assert len(work) == 200
    assert {spec.samples_per_request for spec in work} == {8}
    assert work.description["samples_per_request"] == 8
    questions = {r["question"].strip() for r in gsm8k_records("test")}
    for spec in work.specs[:10]:
        question, instruction = spec.prompt.rsplit("\n", 1)
        assert question in questions and instruction == INSTRUCTION
        assert spec.num_prompt_tokens == len(spec.prompt_token_ids)
    lengths = [spec.num_output_tokens for spec in work]
    # Lognormal with mean 1536 and sigma 0.5: the sample mean within 10%, a right skew.
    assert statistics.mean(lengths) == pytest.approx(1536, rel=0.1)
    assert statistics.median(lengths) < statistics.mean(lengths)
    assert work.num_output_tokens == 8 * sum(lengths)
    assert work.num_samples == 8 * 200


def test_outputs_fill_the_context_the_prompt_leaves():
    options = WorkloadOptions(dataset="reasoning", num_requests=50, max_model_len=512)
    work = build_workload(options)
    for spec in work:
        assert spec.num_prompt_tokens + spec.num_output_tokens <= 512
    # Mean 1536 against at most ~450 tokens of room: nearly every output is capped to the room
    # (other datasets keep to half the context).
    filled = [s for s in work if s.num_prompt_tokens + s.num_output_tokens == 512]
    assert len(filled) >= 45
    capped = build_workload(WorkloadOptions(dataset="reasoning", num_requests=5, max_output_len=64))
    assert max(spec.num_output_tokens for spec in capped) <= 64


def test_samples_per_request_on_other_datasets_and_its_limits():
    work = build_workload(WorkloadOptions(num_requests=4, samples_per_request=3))
    assert [spec.samples_per_request for spec in work] == [3] * 4
    assert build_workload(WorkloadOptions(num_requests=2)).specs[0].samples_per_request == 1
    one = WorkloadOptions(dataset="reasoning", num_requests=2, samples_per_request=1)
    assert build_workload(one).specs[0].samples_per_request == 1
    for bad in (0, 129):
        with pytest.raises(
            ValueError, match=rf"samples_per_request must be in \[1, 128\], got {bad}"
        ):
            WorkloadOptions(samples_per_request=bad)
    with pytest.raises(ValueError, match="reasoning_output_sigma"):
        WorkloadOptions(reasoning_output_sigma=-1)


def test_fixed_output_len_and_zero_sigma_replace_the_draw():
    fixed = WorkloadOptions(dataset="reasoning", num_requests=5, fixed_output_len=100)
    assert {s.num_output_tokens for s in build_workload(fixed)} == {100}
    flat = WorkloadOptions(dataset="reasoning", num_requests=5, reasoning_output_sigma=0)
    assert {s.num_output_tokens for s in build_workload(flat)} == {1536}
