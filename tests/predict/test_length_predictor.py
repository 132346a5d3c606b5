"""Length predictors: the three kinds learn from prompt text, training is deterministic for a
seed, files round-trip, the metrics are exact, and on held-out GSM8K a ranking model orders
outputs better than the prompt length alone."""

from __future__ import annotations

import argparse
import itertools
import json
import random

import numpy as np
import pytest

from corral.paths import default_data_dir
from corral.predict import LENGTH_PREDICTORS, FeatureConfig, load_predictor
from corral.predict import cli as predictor_cli
from corral.predict.dataset import gsm8k_samples, lengths_of, split
from corral.predict.metrics import bucket_accuracy, kendall_tau, mean_absolute_error
from corral.predict.units import WordUnit

STYLES = {"brief": 10, "detailed": 60, "essay": 250}
TOPICS = ["rivers", "trains", "bread", "stars", "chess", "bees", "tides", "glass", "maps", "owls"]


def synthetic(num: int, seed: int) -> tuple[list[str], np.ndarray]:
    """The style word sets the output length (with noise); prompt lengths carry no signal."""
    rng = random.Random(seed)
    prompts, lengths = [], []
    for _ in range(num):
        style = rng.choice(list(STYLES))
        words = " ".join(rng.choice(TOPICS) for _ in range(rng.randint(2, 8)))
        prompts.append(f"Give a {style} answer about {words}.")
        lengths.append(round(STYLES[style] * rng.uniform(0.8, 1.25)))
    return prompts, np.array(lengths, dtype=float)


SMALL = FeatureConfig(num_hash_buckets=256)
KINDS = [
    ("regression", {}),
    ("bucket", {"num_buckets": 3, "num_steps": 150}),
    ("ranking", {"objective": "pairwise", "num_pairs": 5000, "num_steps": 150}),
    ("ranking", {"objective": "listwise", "num_pairs": 5000, "num_steps": 150}),
]


@pytest.mark.parametrize("kind, options", KINDS)
def test_each_kind_learns_the_signal_in_the_text(kind, options):
    prompts, lengths = synthetic(300, seed=1)
    test_prompts, test_lengths = synthetic(100, seed=2)
    predictor = LENGTH_PREDICTORS.get(kind)(features=SMALL, seed=0, **options)
    predictor.fit(prompts, lengths)
    # The ceiling is about 0.83 (the noise within a style cannot be predicted).
    assert kendall_tau(predictor.scores(test_prompts), test_lengths) > 0.55
    predicted = predictor.predict(test_prompts)
    assert bucket_accuracy(test_lengths, predicted, [30, 120]) > 0.85
    assert mean_absolute_error(test_lengths, predicted) < 40
    baseline = LENGTH_PREDICTORS.get("regression")(features=FeatureConfig("length")).fit(
        prompts, lengths
    )
    assert abs(kendall_tau(baseline.scores(test_prompts), test_lengths)) < 0.3


@pytest.mark.parametrize("kind, options", KINDS)
def test_training_is_deterministic_for_a_seed_and_files_round_trip(kind, options, tmp_path):
    prompts, lengths = synthetic(200, seed=3)
    cls = LENGTH_PREDICTORS.get(kind)
    first = cls(features=SMALL, seed=7, **options).fit(prompts, lengths)
    second = cls(features=SMALL, seed=7, **options).fit(prompts, lengths)
    np.testing.assert_array_equal(first.scores(prompts), second.scores(prompts))
    path = first.save(tmp_path / "predictor.npz")
    assert path.stat().st_size < 50_000
    loaded = load_predictor(path)
    assert loaded.kind == kind
    np.testing.assert_array_equal(loaded.scores(prompts), first.scores(prompts))
    np.testing.assert_array_equal(loaded.predict(prompts), first.predict(prompts))
    assert loaded.predict_one(prompts[0]) == round(float(first.predict(prompts[:1])[0]))
    if kind == "ranking":
        other = cls(features=SMALL, seed=8, **options).fit(prompts, lengths)
        assert not np.array_equal(other.scores(prompts), first.scores(prompts))


def test_kendall_tau_matches_the_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(5):
        x, y = rng.integers(0, 6, 60).astype(float), rng.integers(0, 6, 60).astype(float)
        concordant = discordant = ties_x = ties_y = 0
        for i, j in itertools.combinations(range(60), 2):
            dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif dx == dy:
                concordant += 1
            else:
                discordant += 1
        n0 = concordant + discordant
        expected = (concordant - discordant) / np.sqrt((n0 + ties_x) * (n0 + ties_y))
        assert kendall_tau(x, y) == pytest.approx(expected, abs=1e-12)
    assert kendall_tau([1, 2, 3], [10, 20, 30]) == 1.0
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0
    assert bucket_accuracy([5, 50, 500], [6, 500, 400], [10, 100]) == pytest.approx(2 / 3)
    assert mean_absolute_error([1, 2], [2, 4]) == 1.5


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="need >= 2 prompts"):
        LENGTH_PREDICTORS.get("regression")().fit(["one"], [1, 2])
    with pytest.raises(ValueError, match="objective"):
        LENGTH_PREDICTORS.get("ranking")(objective="pointwise")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_predictor(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="has not been fitted"):
        LENGTH_PREDICTORS.get("regression")().predict(["x"])


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    predictor_cli.add_arguments(parser)
    return predictor_cli.run(parser.parse_args(list(argv)))


def test_cli_trains_saves_and_evaluates(tmp_path, capsys):
    prompts, lengths = synthetic(200, seed=4)
    data = tmp_path / "lengths.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": p, "output_len": int(n)}) + "\n" for p, n in zip(prompts, lengths)
        )
    )
    out = tmp_path / "bucket.npz"
    code = run_cli(
        "train", "--data", str(data), "--kind", "bucket", "--num-buckets", "3",
        "--num-hash-buckets", "256", "--num-steps", "100", "--out", str(out),
        "--json", str(tmp_path / "metrics.json"),
    )  # fmt: skip
    assert code == 0 and out.is_file()
    report = capsys.readouterr().out
    assert "Kendall tau" in report and "baseline: prompt length only" in report
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["held_out"]["kendall_tau"] > metrics["baseline_held_out"]["kendall_tau"]
    assert run_cli("evaluate", "--predictor", str(out), "--data", str(data), "--held-out") == 0
    assert "bucket" in capsys.readouterr().out
    data.write_text('{"prompt": "no length"}\n')
    assert run_cli("train", "--data", str(data), "--out", str(out)) == 2
    assert "lengths.jsonl:1" in capsys.readouterr().err


def test_ranking_beats_the_length_only_baseline_on_held_out_gsm8k():
    if not (default_data_dir() / "gsm8k" / "example_model_solutions.jsonl").is_file():
        pytest.skip("GSM8K is not in the data directory (set CORRAL_DATA_DIR)")
    samples = gsm8k_samples(WordUnit(), "model")
    train, held_out = split(samples, 0.2, seed=0)
    prompts, lengths = [s.prompt for s in train], lengths_of(train)
    test_prompts, test_lengths = [s.prompt for s in held_out], lengths_of(held_out)
    ranking = LENGTH_PREDICTORS.get("ranking")(
        features=FeatureConfig(num_hash_buckets=1024), num_pairs=20_000, num_steps=200, seed=0
    ).fit(prompts, lengths)
    baseline = LENGTH_PREDICTORS.get("regression")(features=FeatureConfig("length")).fit(
        prompts, lengths
    )
    tau = kendall_tau(ranking.scores(test_prompts), test_lengths)
    tau_baseline = kendall_tau(baseline.scores(test_prompts), test_lengths)
    assert tau_baseline > 0.2  # the prompt length alone is informative ...
    assert tau > tau_baseline + 0.03  # ... and the text adds to it
