"""The training script end to end on a tiny preset and a small synthetic GSM8K-format corpus:
the loss falls, and it writes loadable model directories with their cards."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from corral.demo.report import RECOMMENDED_SAMPLING

NAMES = ["Tom", "Ana", "Li", "Sara", "Omar", "Kim"]
ITEMS = ["apples", "pens", "books", "stickers", "coins"]


def _write_split(path: Path, num_examples: int, seed: int) -> None:
    rng = random.Random(seed)
    with path.open("w") as handle:
        for _ in range(num_examples):
            name, item = rng.choice(NAMES), rng.choice(ITEMS)
            a, b = rng.randint(2, 40), rng.randint(2, 40)
            record = {
                "question": f"{name} has {a} {item} and gets {b} more. How many {item} now?",
                "answer": f"{name} has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} {item}.\n"
                f"#### {a + b}",
            }
            handle.write(json.dumps(record) + "\n")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from corral.demo.train import main

    data_dir = tmp_path_factory.mktemp("data")
    (data_dir / "gsm8k").mkdir()
    _write_split(data_dir / "gsm8k" / "train.jsonl", 300, seed=0)
    _write_split(data_dir / "gsm8k" / "test.jsonl", 20, seed=1)
    out_dir = tmp_path_factory.mktemp("models")
    argv = ["--preset", "tiny", "--out-dir", str(out_dir), "--data-dir", str(data_dir)]
    argv += ["--max-num-steps", "60", "--num-agreement-prompts", "4", "--max-new-tokens", "12"]
    argv += ["--num-reply-questions", "4"]
    assert main(argv) == 0
    return out_dir


@pytest.mark.parametrize("name", ["corral-demo", "corral-demo-draft"])
def test_loss_falls_and_directories_are_complete(trained: Path, name: str) -> None:
    model_dir = trained / name
    metrics = json.loads((model_dir / "training_metrics.json").read_text())
    losses = [row["train_loss"] for row in metrics["history"]]
    assert len(losses) == 60
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.5
    heldout = [row["heldout_loss"] for row in metrics["history"] if "heldout_loss" in row]
    assert heldout[-1] < heldout[0]
    assert metrics["heldout"]["answer"] < metrics["vocab_size"]  # better than uniform
    for file_name in ["config.json", "model.safetensors", "tokenizer.json",
                      "tokenizer_config.json", "generation_config.json", "README.md",
                      "loss_curve.png"]:  # fmt: skip
        assert (model_dir / file_name).is_file(), file_name
    assert metrics["replies"]["greedy"]["num_replies"] == 4
    generation = json.loads((model_dir / "generation_config.json").read_text())
    assert generation["repetition_penalty"] == RECOMMENDED_SAMPLING["repetition_penalty"]
    card = (model_dir / "README.md").read_text()
    assert f"{metrics['num_parameters']:,}" in card and "MIT" in card


def test_trained_directories_load_in_transformers(trained: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for name in ["corral-demo", "corral-demo-draft"]:
        tokenizer = AutoTokenizer.from_pretrained(trained / name)
        model = AutoModelForCausalLM.from_pretrained(trained / name)
        assert model.config.vocab_size == len(tokenizer)
        assert model.config.eos_token_id == tokenizer.eos_token_id


def test_same_seed_same_stream() -> None:
    from corral.demo.trainer import TrainConfig, packed_batches

    sequences = [list(range(i, i + 7)) for i in range(50)]
    config = TrainConfig(seq_len=8, micro_batch_size=2)
    first = [b.tolist() for b in packed_batches(sequences, config, epoch=0)]
    assert first == [b.tolist() for b in packed_batches(sequences, config, epoch=0)]
    assert first != [b.tolist() for b in packed_batches(sequences, config, epoch=1)]
    assert len(first) == (50 * 7 // 8) // 2  # whole windows, whole micro-batches
    drawn = Counter(token for batch in first for row in batch for token in row)
    assert drawn <= Counter(token for sequence in sequences for token in sequence)


def test_bad_recipe_is_refused() -> None:
    from corral.demo.trainer import TrainConfig

    with pytest.raises(ValueError, match="seq_len"):
        TrainConfig(seq_len=0)
    with pytest.raises(ValueError, match="peak_lr"):
        TrainConfig(peak_lr=3.0)
