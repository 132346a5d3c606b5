"""Datasets: trace replay, length scaling, shared prefixes, multi-turn linkage, JSONL input."""

from __future__ import annotations

import json

import pytest

from corral.paths import default_data_dir
from corral.workloads import ArrivalOptions, WorkloadOptions, build_workload
from corral.workloads.datasets.azure import parse_timestamp_s, read_trace
from corral.workloads.tokens import PLACEHOLDER_TOKEN_ID, WordHashEncoder, synthetic_token_ids

AZURE_CONV = default_data_dir() / "azure-llm-2023" / "AzureLLMInferenceTrace_conv.csv"
GSM8K = default_data_dir() / "gsm8k" / "test.jsonl"

TINY_TRACE = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:00:00.0000000,100,10
2023-11-16 18:00:00.5000000,3000,20
2023-11-16 18:00:02.2500000,40,5
2023-11-16 18:00:03.0000000,400,900
"""


@pytest.fixture
def tiny_data_dir(tmp_path, monkeypatch):
    folder = tmp_path / "azure-llm-2023"
    folder.mkdir()
    (folder / "AzureLLMInferenceTrace_conv.csv").write_text(TINY_TRACE)
    monkeypatch.setenv("CORRAL_DATA_DIR", str(tmp_path))
    return tmp_path


def test_trace_replay_keeps_order_and_scaled_gaps(tiny_data_dir):
    workload = build_workload(
        WorkloadOptions(dataset="azure-conv", arrival=ArrivalOptions("trace", time_scale=0.5))
    )
    assert [s.arrival_time_s for s in workload] == pytest.approx([0.0, 0.25, 1.125, 1.5])
    assert [s.num_prompt_tokens for s in workload] == [100, 3000, 40, 400]
    assert [s.num_output_tokens for s in workload] == [10, 20, 5, 900]


def test_length_scaling_and_caps(tiny_data_dir):
    workload = build_workload(
        WorkloadOptions(dataset="azure-conv", length_scale=0.5, max_model_len=1024)
    )
    # halved, then output <= 1024 // 2 and prompt cut so that prompt + output <= 1024
    assert [(s.num_prompt_tokens, s.num_output_tokens) for s in workload] == [
        (50, 5),
        (1014, 10),
        (20, 2),  # round(2.5) = 2 (banker's rounding), never below 1
        (200, 450),
    ]


def test_sampling_and_offset(tiny_data_dir):
    workload = build_workload(WorkloadOptions(dataset="azure-conv", trace_offset=1, num_requests=2))
    assert [s.num_prompt_tokens for s in workload] == [3000, 40]
    assert workload.specs[0].arrival_time_s == 0.0


def test_missing_data_names_the_override(tmp_path, monkeypatch):
    monkeypatch.setenv("CORRAL_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="CORRAL_DATA_DIR"):
        build_workload(WorkloadOptions(dataset="azure-code"))


@pytest.mark.skipif(not AZURE_CONV.is_file(), reason="azure-llm-2023 data not present")
def test_real_azure_conv_trace():
    rows = read_trace(AZURE_CONV)
    workload = build_workload(
        WorkloadOptions(dataset="azure-conv", arrival=ArrivalOptions("trace", time_scale=0.1))
    )
    assert len(workload) == len(rows) == 19366
    times = [s.arrival_time_s for s in workload]
    assert times == sorted(times)
    assert times[-1] == pytest.approx((rows[-1][0] - rows[0][0]) * 0.1)
    assert parse_timestamp_s("1970-01-02 00:00:01.5") == 86401.5


def test_synthetic_ids_are_deterministic_and_in_range():
    workload = build_workload(WorkloadOptions(dataset="random", num_requests=3, vocab_size=50))
    first = workload.token_ids(workload.specs[0])
    assert first == workload.token_ids(workload.specs[0])
    assert len(first) == workload.specs[0].num_prompt_tokens
    assert all(1 <= t < 50 for t in first)
    assert first != workload.token_ids(workload.specs[1])
    assert synthetic_token_ids(5, 10, 100) == synthetic_token_ids(5, 10, 100)


def test_random_lengths_and_shared_prefix():
    options = WorkloadOptions(
        dataset="random",
        num_requests=200,
        input_len=100,
        output_len=20,
        range_ratio=0.5,
        prefix_len=32,
    )
    workload = build_workload(options)
    for spec in workload:
        assert 32 + 50 <= spec.num_prompt_tokens <= 32 + 150
        assert 10 <= spec.num_output_tokens <= 30
    prefixes = {tuple(workload.token_ids(s)[:32]) for s in workload}
    assert len(prefixes) == 1


def test_shared_prefix_groups_share_their_system_prompt():
    workload = build_workload(
        WorkloadOptions(
            dataset="shared-prefix", num_requests=40, num_groups=3, prefix_len=50, input_len=10
        )
    )
    by_prefix: dict[tuple[int, ...], int] = {}
    for spec in workload:
        ids = workload.token_ids(spec)
        by_prefix[tuple(ids[:52])] = by_prefix.get(tuple(ids[:52]), 0) + 1  # "System g:" + 50
    assert len(by_prefix) == 3 and sum(by_prefix.values()) == 40


def test_multi_turn_extends_the_previous_turn():
    workload = build_workload(
        WorkloadOptions(
            dataset="multi-turn",
            num_requests=7,
            num_turns=3,
            input_len=8,
            output_len=5,
            think_time_s=1.5,
        )
    )
    by_id = {s.request_id: s for s in workload}
    follow_ups = [s for s in workload if s.parent_request_id]
    assert len(follow_ups) == 4  # conversations of 3, 3 and 1 turns
    for spec in follow_ups:
        parent = by_id[spec.parent_request_id]
        assert spec.conversation_id == parent.conversation_id
        assert spec.turn_index == parent.turn_index + 1
        assert spec.think_time_s == 1.5
        ids, parent_ids = workload.token_ids(spec), workload.token_ids(parent)
        reply = [PLACEHOLDER_TOKEN_ID] * parent.num_output_tokens
        assert ids[: len(parent_ids) + len(reply)] == parent_ids + reply
        assert spec.prompt.startswith(parent.prompt)
        assert spec.new_prompt and spec.new_prompt in spec.prompt


@pytest.mark.skipif(not GSM8K.is_file(), reason="gsm8k data not present")
def test_gsm8k_k_shot_prompts_share_the_examples():
    workload = build_workload(WorkloadOptions(dataset="gsm8k", num_requests=5, num_shots=3))
    shots = workload.specs[0].prompt.rsplit("Question:", 1)[0]
    num_shot_ids = len(WordHashEncoder(32000).encode(shots))
    first = workload.token_ids(workload.specs[0])[:num_shot_ids]
    for spec in workload:
        assert spec.prompt.startswith(shots) and spec.prompt.endswith("Answer:")
        assert workload.token_ids(spec)[: num_shot_ids - 1] == first[:-1]
        assert spec.num_output_tokens > 5


def test_jsonl_dataset(tmp_path):
    path = tmp_path / "requests.jsonl"
    lines = [
        {"prompt": "hello there world", "output_len": 7, "arrival_time_s": 2.0},
        {"prompt_token_ids": [5, 6, 7, 8], "max_tokens": 3, "arrival_time_s": 1.0},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    workload = build_workload(WorkloadOptions(dataset="jsonl", dataset_path=str(path)))
    assert [s.arrival_time_s for s in workload] == [0.0, 1.0]  # trace order by timestamp
    assert [s.num_output_tokens for s in workload] == [3, 7]
    assert workload.token_ids(workload.specs[0]) == [5, 6, 7, 8]
    assert workload.specs[1].num_prompt_tokens == 3


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"prompt": "hi"}', "output length"),
        ('{"output_len": 3}', "prompt"),
        ("[1, 2]", "JSON object"),
        ("{not json", "not valid JSON"),
        ('{"prompt_token_ids": [1, -2], "output_len": 3}', "prompt_token_ids"),
    ],
)
def test_jsonl_errors_name_the_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok", "output_len": 2}\n' + line + "\n")
    with pytest.raises(ValueError, match=message) as error:
        build_workload(WorkloadOptions(dataset="jsonl", dataset_path=str(path)))
    assert "bad.jsonl:2" in str(error.value)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="num_requests"):
        WorkloadOptions(num_requests=0)
    with pytest.raises(ValueError, match="sample_fraction"):
        WorkloadOptions(sample_fraction=1.5)
    with pytest.raises(ValueError, match="unknown dataset"):
        build_workload(WorkloadOptions(dataset="sharegpt"))


def test_clients_and_priorities_are_tagged_per_conversation():
    workload = build_workload(
        WorkloadOptions(
            dataset="multi-turn",
            num_requests=40,
            num_turns=4,
            input_len=4,
            output_len=2,
            num_clients=3,
            num_priorities=2,
        )
    )
    assert {s.client_id for s in workload} == {"client-0", "client-1", "client-2"}
    assert {s.priority for s in workload} == {0, 1}
    for conversation in {s.conversation_id for s in workload}:
        turns = [s for s in workload if s.conversation_id == conversation]
        assert len({(s.client_id, s.priority) for s in turns}) == 1
    plain = build_workload(WorkloadOptions(dataset="random", num_requests=5))
    assert {(s.client_id, s.priority) for s in plain} == {(None, 0)}
