"""`corral simulate` and predicted output lengths (issue 13, defect 5): sjf, srpt and predicted
KV reservation refuse to run without a stated source of lengths; --length-predictor applies
the engine's predictor to each prompt's text; --length-oracle gives the true length."""

from __future__ import annotations

import json

import pytest

from corral.config import SchedulerConfig
from corral.predict import LENGTH_PREDICTORS, FeatureConfig
from corral.request import Request
from corral.sampling_params import SamplingParams
from corral.sim.lengths import length_hook
from corral.workloads import WorkloadOptions, build_workload
from tests.sim.test_cli_and_profile import main

PROMPTS = ["Give a brief answer about bees.", "Give an essay answer about tides and maps."]
LENGTHS = [4.0, 20.0]
BASE = ["simulate", "run", "--model", "smollm-135m", "--hardware", "a100"]
RANDOM = ["--dataset", "random", "--num-requests", "8", "--input-len", "50", "--output-len", "9"]


@pytest.fixture()
def predictor_path(tmp_path):
    predictor = LENGTH_PREDICTORS.get("regression")(features=FeatureConfig(num_hash_buckets=64))
    return predictor.fit(PROMPTS * 10, LENGTHS * 10).save(tmp_path / "lengths.npz")


@pytest.fixture()
def text_workload(tmp_path):
    path = tmp_path / "prompts.jsonl"
    lines = [{"prompt": PROMPTS[i % 2], "output_len": 30 + i} for i in range(6)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return build_workload(WorkloadOptions(dataset="jsonl", dataset_path=str(path)))


@pytest.mark.parametrize(
    "flags",
    [
        ["--scheduling-policy", "sjf"],
        ["--scheduling-policy", "srpt"],
        ["--kv-reservation", "predicted"],
    ],
)
def test_length_aware_scheduling_needs_a_stated_source(flags, caplog):
    assert main(BASE + RANDOM + flags) == 2
    assert "--length-predictor PATH" in caplog.text and "--length-oracle" in caplog.text
    assert main(BASE + RANDOM + flags + ["--length-oracle"]) == 0


def test_both_sources_are_refused(caplog, predictor_path):
    flags = ["--length-oracle", "--length-predictor", str(predictor_path)]
    assert main(BASE + RANDOM + flags) == 2
    assert "not both" in caplog.text


def test_the_predictor_needs_prompt_text(caplog, predictor_path):
    assert main(BASE + RANDOM + ["--length-predictor", str(predictor_path)]) == 2
    assert "predicts from prompt text" in caplog.text


def _predicted(hook, workload) -> dict[str, int | None]:
    predicted = {}
    for spec in workload:
        request = Request(
            spec.request_id, [1, 2, 3], SamplingParams(max_tokens=8), max_model_len=64
        )
        hook(request, spec)
        predicted[spec.request_id] = request.predicted_num_output_tokens
    return predicted


def test_the_predictor_predicts_from_the_prompt_text(text_workload, predictor_path):
    from corral.predict import load_predictor

    hook = length_hook(text_workload, SchedulerConfig(policy="sjf"), str(predictor_path), False)
    predictor = load_predictor(str(predictor_path))
    expected = {spec.request_id: predictor.predict_one(spec.prompt) for spec in text_workload}
    assert _predicted(hook, text_workload) == expected
    short, long = (predictor.predict_one(prompt) for prompt in PROMPTS)
    assert short < long  # what the predictor learned, not the workload's true lengths (30+)


def test_the_oracle_gives_the_true_length(text_workload):
    hook = length_hook(text_workload, SchedulerConfig(policy="sjf"), None, True)
    expected = {spec.request_id: spec.num_output_tokens for spec in text_workload}
    assert _predicted(hook, text_workload) == expected


def test_fcfs_needs_no_lengths(text_workload):
    assert length_hook(text_workload, SchedulerConfig(), None, False) is None
