"""Measure the saved demo models and write their metrics, loss curves and model cards.

Every figure is measured on the shipped directories (bf16 weights computed in float32, the
tokenizer as saved), so the cards describe exactly what is committed.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, NamedTuple

from corral.demo.corpus import Example, corpus_words, encode_examples

logger = logging.getLogger(__name__)

# Recommended decoding for the demo models, saved in generation_config.json: plain greedy
# decoding of a model this small often falls into a repeated line.
RECOMMENDED_SAMPLING = {"repetition_penalty": 1.2}


class TrainedModel(NamedTuple):
    """What training knows about one model and the measurements cannot recover."""

    role: str  # "target" or "draft"
    companion: str
    shape: dict[str, int]
    train: dict[str, Any]  # the recipe, plus num_steps, num_tokens, wall_s, corpus sizes
    history: list[dict[str, float]]
    hardware: dict[str, Any]


def previous_training(model_dir: Path) -> tuple[TrainedModel, float]:
    """The TrainedModel and total run wall time recorded in an existing directory."""
    from corral.demo.model_card import METRICS_FILE

    metrics = json.loads((model_dir / METRICS_FILE).read_text())
    trained = TrainedModel(
        metrics["role"], metrics["companion"], metrics["shape"], metrics["train"],
        metrics["history"], metrics["hardware"],
    )  # fmt: skip
    return trained, float(metrics["total_wall_s"])


def _load_float32(model_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    return model


def _reply_figures(model, tokenizer, questions, vocabulary, max_new_tokens) -> dict[str, Any]:
    from corral.demo.evaluate import generate_replies, reply_quality

    figures: dict[str, Any] = {"num_questions": len(questions), "max_new_tokens": max_new_tokens}
    for label, settings in (("greedy", {"repetition_penalty": 1.0}),
                            ("recommended", RECOMMENDED_SAMPLING)):  # fmt: skip
        replies = generate_replies(model, tokenizer, questions, max_new_tokens, **settings)
        figures[label] = reply_quality(replies, vocabulary)._asdict()
        figures[label]["settings"] = settings
        if label == "recommended":
            figures["samples"] = [
                {"question": question, "answer": text}
                for question, (_, text, _) in zip(questions[:2], replies[:2])
            ]
    return figures


def document(
    dirs: dict[str, Path],
    trained: dict[str, TrainedModel],
    train_examples: list[Example],
    test_examples: list[Example],
    *,
    total_wall_s: float,
    num_agreement_prompts: int,
    num_reply_questions: int,
    max_new_tokens: int,
) -> None:
    """Measure both saved models and write training_metrics.json, the loss curve and README.md
    into each directory. dirs and trained are keyed by model name, the target first."""
    from transformers import AutoTokenizer

    from corral.demo.evaluate import greedy_agreement, perplexity
    from corral.demo.model_card import LOSS_CURVE_FILE, METRICS_FILE, plot_loss_curves, write_card

    start_s = time.perf_counter()
    target_name, draft_name = list(dirs)
    tokenizer = AutoTokenizer.from_pretrained(dirs[target_name])
    test_encoded = encode_examples(tokenizer, test_examples)
    shipped = {name: _load_float32(path) for name, path in dirs.items()}
    prompts = [e.token_ids[: e.answer_start] for e in test_encoded[:num_agreement_prompts]]
    agreement = greedy_agreement(
        shipped[target_name], shipped[draft_name], prompts, max_new_tokens, tokenizer.eos_token_id
    )._asdict()
    agreement["max_new_tokens"] = max_new_tokens
    logger.info("draft agreement %.3f, tokens per target step %s", agreement["rate"],
                agreement["tokens_per_target_step"])  # fmt: skip
    vocabulary = corpus_words(train_examples)
    questions = [e.question for e in test_examples[:num_reply_questions]]
    all_metrics = {}
    for name in dirs:
        ppl = perplexity(shipped[name], test_encoded)._asdict()
        ppl["num_examples"] = len(test_encoded)
        replies = _reply_figures(
            shipped[name], tokenizer, questions, vocabulary, 2 * max_new_tokens
        )
        logger.info("%s: held-out perplexity %s; replies %s", name, ppl, replies)
        info = trained[name]
        all_metrics[name] = {
            "name": name,
            "role": info.role,
            "companion": info.companion,
            "num_parameters": sum(p.numel() for p in shipped[name].parameters()),
            "shape": info.shape,
            "vocab_size": len(tokenizer),
            "context_len": shipped[name].config.max_position_embeddings,
            "train": info.train,
            "hardware": info.hardware,
            "heldout": ppl,
            "agreement": agreement,
            "replies": {k: v for k, v in replies.items() if k != "samples"},
            "samples": replies["samples"],
            "history": info.history,
        }
    evaluation_s = round(time.perf_counter() - start_s, 1)
    histories = {name: info.history for name, info in trained.items()}
    for name, path in dirs.items():
        metrics = {**all_metrics[name], "total_wall_s": round(total_wall_s, 1),
                   "evaluation_wall_s": evaluation_s}  # fmt: skip
        (path / METRICS_FILE).write_text(json.dumps(metrics, indent=1) + "\n")
        plot_loss_curves(histories, path / LOSS_CURVE_FILE)
        write_card(path)
