"""A saved length predictor attached to the engine (--length-predictor) sets each request's
predicted output length at admission; embeddings from the served model's hidden states."""

from __future__ import annotations

import numpy as np

from corral.predict import LENGTH_PREDICTORS, FeatureConfig, load_predictor
from corral.predict.embeddings import HiddenStateEmbedder
from corral.sampling_params import SamplingParams

PROMPTS = ["Give a brief answer about bees.", "Give an essay answer about tides and maps."]
LENGTHS = [4.0, 20.0]


def test_the_engine_predicts_at_admission_and_sjf_runs_the_short_one_first(tiny_model, tmp_path):
    from corral.llm import LLM

    prompts = PROMPTS * 10
    lengths = LENGTHS * 10
    path = (
        LENGTH_PREDICTORS.get("regression")(features=FeatureConfig(num_hash_buckets=64))
        .fit(prompts, lengths)
        .save(tmp_path / "lengths.npz")
    )
    llm = LLM(
        model=str(tiny_model),
        dtype="float32",
        num_blocks=64,
        max_num_seqs=1,
        # No starvation bound: a first step that compiles the CPU kernels (a minute on a fresh
        # checkout) must not age the queued requests into arrival order.
        scheduling_policy="sjf:max_wait_s=none",
        length_predictor=str(path),
    )
    engine = llm.engine
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    engine.add_request("long", PROMPTS[1], params)
    engine.add_request("short", PROMPTS[0], params)
    engine.add_request("given", PROMPTS[1], params, predicted_num_output_tokens=3)
    predicted = {rid: r.predicted_num_output_tokens for rid, r in engine.scheduler.requests.items()}
    expected = load_predictor(path).predict(PROMPTS)
    assert predicted["short"] == round(expected[0]) and predicted["long"] == round(expected[1])
    assert predicted["short"] < predicted["long"]
    assert predicted["given"] == 3  # an explicit value wins over the predictor
    finished = []
    while engine.has_unfinished_requests():
        finished += [out.request_id for out in engine.step() if out.finished]
    assert finished == ["given", "short", "long"]


def test_hidden_state_embeddings_extend_the_features(tiny_model):
    embedder = HiddenStateEmbedder(str(tiny_model))
    vectors = embedder.embed(PROMPTS)
    assert vectors.shape == (2, 64) and np.isfinite(vectors).all()
    assert not np.allclose(vectors[0], vectors[1])
    config = FeatureConfig(num_hash_buckets=32, embedding_model=str(tiny_model))
    predictor = LENGTH_PREDICTORS.get("regression")(features=config).fit(PROMPTS * 3, LENGTHS * 3)
    assert predictor._standardize is not None and len(predictor._standardize.mean) == 6 + 64
    assert predictor.predict(PROMPTS)[1] > predictor.predict(PROMPTS)[0]
