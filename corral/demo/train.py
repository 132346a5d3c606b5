"""Train corral's bundled demo models from scratch on CPU: a byte-level BPE tokenizer, then the
target (corral-demo) and the draft (corral-demo-draft) on the same GSM8K token stream, saved as
Hugging Face directories (bf16 safetensors) with their model cards.

    .venv/bin/python -m corral.demo.train                # what `make demo-models` runs
    .venv/bin/python -m corral.demo.train --preset tiny --out-dir /tmp/m --max-num-steps 5
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from corral.demo import BUNDLED_MODELS_DIR
from corral.demo.corpus import EncodedExample, encode_examples, load_gsm8k, plain_texts
from corral.demo.report import RECOMMENDED_SAMPLING, TrainedModel, document, previous_training
from corral.demo.trainer import ModelShape, TrainConfig, build_model, count_parameters, train

logger = logging.getLogger(__name__)

TARGET_NAME = "corral-demo"
DRAFT_NAME = "corral-demo-draft"

# preset -> (vocab size, target shape, draft shape, recipe)
PRESETS: dict[str, tuple[int, ModelShape, ModelShape, TrainConfig]] = {
    "demo": (
        4096,
        ModelShape(256, 768, 4, 4, 2),
        ModelShape(128, 384, 2, 4, 2),
        TrainConfig(num_epochs=4),
    ),
    "tiny": (
        384,
        ModelShape(32, 64, 1, 2, 1),
        ModelShape(16, 32, 1, 2, 1),
        TrainConfig(
            seq_len=64, micro_batch_size=2, grad_accum_steps=1, num_epochs=1, peak_lr=1e-2,
            warmup_steps=2, eval_every_steps=5,
        ),
    ),
}  # fmt: skip


def _hardware() -> dict[str, Any]:
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": f"{cpu} ({os.cpu_count()} cores)",
        "num_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def _mean_loss(examples: list[EncodedExample]):
    from corral.demo.evaluate import negative_log_likelihood

    def evaluate(model: Any) -> float:
        _, _, nll, count = negative_log_likelihood(model, examples)
        return nll / count

    return evaluate


def _save(model: Any, tokenizer: Any, out_dir: Path, context_len: int) -> None:
    """Write the model in bf16 with its tokenizer, replacing any previous directory."""
    import copy

    import torch

    from corral.demo.bpe import save_tokenizer

    staging = out_dir.with_name(f".{out_dir.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    bf16.generation_config.eos_token_id = tokenizer.eos_token_id
    bf16.generation_config.bos_token_id = tokenizer.bos_token_id
    bf16.generation_config.pad_token_id = tokenizer.pad_token_id
    bf16.save_pretrained(staging)
    _write_generation_config(staging)
    save_tokenizer(tokenizer, staging, model_max_length=context_len)
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)


def _write_generation_config(model_dir: Path) -> None:
    """Add the recommended decoding settings to the directory's generation_config.json."""
    path = model_dir / "generation_config.json"
    config = json.loads(path.read_text())
    config.update(RECOMMENDED_SAMPLING)
    path.write_text(json.dumps(config, indent=2) + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=BUNDLED_MODELS_DIR)
    parser.add_argument("--data-dir", type=Path, default=None, help="holds gsm8k/ (default: "
                        "$CORRAL_DATA_DIR or <repo>/../shared/data)")  # fmt: skip
    parser.add_argument("--preset", choices=sorted(PRESETS), default="demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-epochs", type=int, default=None)
    parser.add_argument("--max-num-steps", type=int, default=None)
    parser.add_argument("--max-train-examples", type=int, default=None)
    parser.add_argument("--max-test-examples", type=int, default=None)
    parser.add_argument("--num-heldout-loss-examples", type=int, default=64,
                        help="test examples scored during training for the loss curve")  # fmt: skip
    parser.add_argument("--num-agreement-prompts", type=int, default=100)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument(
        "--num-reply-questions",
        type=int,
        default=60,
        help="test questions answered to measure loops and word share",
    )
    parser.add_argument("--num-threads", type=int, default=2)
    parser.add_argument(
        "--evaluate-only",
        action="store_true",
        help="keep the saved models; re-measure them and rewrite their cards",
    )
    return parser


def _train_one(name, shape, tokenizer, train_ids, heldout, config):
    model = build_model(shape, tokenizer, config.seq_len, config.seed)
    logger.info("%s: %d parameters, %s", name, count_parameters(model), shape)
    return model, train(model, train_ids, config, evaluate=_mean_loss(heldout), label=name)


def _train_all(args, train_examples, test_examples) -> tuple[dict, dict, float]:
    """Train the tokenizer and both models and save them; (dirs, TrainedModels, wall seconds)."""
    import torch

    from corral.demo.bpe import train_byte_level_bpe

    start_s = time.perf_counter()
    torch.set_num_threads(args.num_threads)
    vocab_size, target_shape, draft_shape, config = PRESETS[args.preset]
    config = replace(config, seed=args.seed, num_threads=args.num_threads)
    if args.num_epochs is not None:
        config = replace(config, num_epochs=args.num_epochs)
    if args.max_num_steps is not None:
        config = replace(config, max_num_steps=args.max_num_steps)
    tokenizer = train_byte_level_bpe(plain_texts(train_examples), vocab_size)
    train_ids = [e.token_ids for e in encode_examples(tokenizer, train_examples)]
    heldout = encode_examples(tokenizer, test_examples[: args.num_heldout_loss_examples])
    logger.info("tokenizer: %d tokens; train stream %d tokens", len(tokenizer),
                sum(map(len, train_ids)))  # fmt: skip
    dirs, trained = {}, {}
    for name, shape in ((TARGET_NAME, target_shape), (DRAFT_NAME, draft_shape)):
        model, result = _train_one(name, shape, tokenizer, train_ids, heldout, config)
        dirs[name] = args.out_dir / name
        _save(model, tokenizer, dirs[name], config.seq_len)
        trained[name] = TrainedModel(
            role="target" if name == TARGET_NAME else "draft",
            companion=DRAFT_NAME if name == TARGET_NAME else TARGET_NAME,
            shape=asdict(shape),
            train={
                **asdict(config),
                "num_train_examples": len(train_examples),
                "num_stream_tokens": sum(map(len, train_ids)),
                "num_steps": result.num_steps,
                "num_tokens": result.num_tokens,
                "wall_s": round(result.wall_s, 1),
            },
            history=[{k: round(v, 5) for k, v in row.items()} for row in result.history],
            hardware=_hardware(),
        )
    return dirs, trained, time.perf_counter() - start_s


def main(argv: list[str] | None = None) -> int:
    """Train the tokenizer and both models (unless --evaluate-only), measure them, write cards."""
    args = build_parser().parse_args(argv)
    train_examples = load_gsm8k("train", args.data_dir, args.max_train_examples)
    test_examples = load_gsm8k("test", args.data_dir, args.max_test_examples)
    if args.evaluate_only:
        dirs = {name: args.out_dir / name for name in (TARGET_NAME, DRAFT_NAME)}
        previous = {name: previous_training(path) for name, path in dirs.items()}
        trained = {name: info for name, (info, _) in previous.items()}
        wall_s = previous[TARGET_NAME][1]
        for path in dirs.values():
            _write_generation_config(path)
    else:
        dirs, trained, wall_s = _train_all(args, train_examples, test_examples)
    document(
        dirs, trained, train_examples, test_examples, total_wall_s=wall_s,
        num_agreement_prompts=args.num_agreement_prompts,
        num_reply_questions=args.num_reply_questions, max_new_tokens=args.max_new_tokens,
    )  # fmt: skip
    logger.info("done: %s", [str(path) for path in dirs.values()])
    return 0


if __name__ == "__main__":
    # Read by OpenMP when torch loads: on cores shared with other processes, spinning workers
    # stall each other (a step measured 4x slower); passive waiting keeps most of the speed.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    sys.exit(main())
