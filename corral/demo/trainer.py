"""Train a small Llama (transformers' LlamaForCausalLM) on CPU on a packed token stream."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ModelShape:
    """The Llama hyper-parameters that set a model's size."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """The optimisation recipe; one optimizer step sees
    micro_batch_size * grad_accum_steps sequences of seq_len tokens."""

    seq_len: int = 512
    micro_batch_size: int = 4
    grad_accum_steps: int = 2
    num_epochs: int = 5
    max_num_steps: int | None = None  # stop early (tests); None: all epochs
    peak_lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 0
    eval_every_steps: int = 50
    num_threads: int = 2

    def __post_init__(self) -> None:
        for name in ("seq_len", "micro_batch_size", "grad_accum_steps", "num_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_num_steps is not None and self.max_num_steps < 1:
            raise ValueError(f"max_num_steps must be >= 1, got {self.max_num_steps}")
        if not 0 < self.peak_lr < 1:
            raise ValueError(f"peak_lr must be in (0, 1), got {self.peak_lr}")


class TrainResult(NamedTuple):
    """The trained model (float32, eval mode), its loss history and the wall time."""

    model: Any
    history: list[dict[str, float]]
    wall_s: float
    num_steps: int
    num_tokens: int


def build_model(shape: ModelShape, tokenizer: Any, seq_len: int, seed: int):
    """A freshly initialised LlamaForCausalLM (tied embeddings) for the tokenizer's vocabulary."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_position_embeddings=seq_len,
        tie_word_embeddings=True,
        rope_theta=10000.0,
        initializer_range=0.02,
        **asdict(shape),
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def count_parameters(model: Any) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(parameter.numel() for parameter in model.parameters())


def packed_batches(
    sequences: Sequence[Sequence[int]], config: TrainConfig, epoch: int
) -> Iterator[Any]:
    """[micro_batch_size, seq_len] tensors for one epoch: the sequences in a seeded shuffled order,
    concatenated and cut into windows (the last partial window and batch are dropped)."""
    import torch

    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
    order = torch.randperm(len(sequences), generator=generator).tolist()
    stream = torch.tensor([token for index in order for token in sequences[index]])
    num_windows = len(stream) // config.seq_len
    windows = stream[: num_windows * config.seq_len].view(num_windows, config.seq_len)
    for begin in range(0, num_windows - config.micro_batch_size + 1, config.micro_batch_size):
        yield windows[begin : begin + config.micro_batch_size]


def steps_per_epoch(sequences: Sequence[Sequence[int]], config: TrainConfig) -> int:
    num_windows = sum(len(sequence) for sequence in sequences) // config.seq_len
    return num_windows // config.micro_batch_size // config.grad_accum_steps


def learning_rate(step: int, total_steps: int, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio * peak_lr at total_steps."""
    if step < config.warmup_steps:
        return config.peak_lr * (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps))
    floor = config.min_lr_ratio
    return config.peak_lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def _optimizer(model: Any, config: TrainConfig):
    import torch

    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # fused: several times faster than the per-tensor loop on CPU.
    return torch.optim.AdamW(groups, lr=config.peak_lr, betas=(0.9, 0.95), fused=True)


def train(
    model: Any,
    sequences: Sequence[Sequence[int]],
    config: TrainConfig,
    evaluate: Callable[[Any], float] | None = None,
    label: str = "model",
) -> TrainResult:
    """Train model in place on the packed sequences; evaluate(model) -> held-out loss is called
    every eval_every_steps and at the end. history rows: step, tokens, lr, train_loss, and
    heldout_loss where evaluated."""
    import torch

    torch.set_num_threads(config.num_threads)
    total_steps = steps_per_epoch(sequences, config) * config.num_epochs
    if config.max_num_steps is not None:
        total_steps = min(total_steps, config.max_num_steps)
    if total_steps < 1:
        raise ValueError(
            f"the corpus is too small for one step of {config.micro_batch_size} x "
            f"{config.grad_accum_steps} windows of {config.seq_len} tokens"
        )
    optimizer = _optimizer(model, config)
    tokens_per_step = config.seq_len * config.micro_batch_size * config.grad_accum_steps
    history: list[dict[str, float]] = []
    start_s = time.perf_counter()
    step = 0
    model.train()
    for epoch in range(config.num_epochs):
        micro_batches = packed_batches(sequences, config, epoch)
        while step < total_steps:
            chunk = [batch for _, batch in zip(range(config.grad_accum_steps), micro_batches)]
            if len(chunk) < config.grad_accum_steps:
                break
            lr = learning_rate(step, total_steps, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = 0.0
            for batch in chunk:
                loss = model(input_ids=batch, labels=batch).loss / config.grad_accum_steps
                loss.backward()
                loss_sum += float(loss.detach())
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            row = {"step": step, "tokens": step * tokens_per_step, "lr": lr, "train_loss": loss_sum}
            if evaluate is not None and (
                step % config.eval_every_steps == 0 or step == total_steps
            ):
                model.eval()
                row["heldout_loss"] = float(evaluate(model))
                model.train()
            history.append(row)
            if step % 10 == 0 or "heldout_loss" in row:
                elapsed_s = time.perf_counter() - start_s
                logger.info(
                    "%s step %d/%d epoch %d loss %.4f%s lr %.2e %.0f tok/s %.0fs",
                    label, step, total_steps, epoch, loss_sum,
                    f" heldout {row['heldout_loss']:.4f}" if "heldout_loss" in row else "",
                    lr, step * tokens_per_step / elapsed_s, elapsed_s,
                )  # fmt: skip
        if step >= total_steps:
            break
    model.eval()
    return TrainResult(model, history, time.perf_counter() - start_s, step, step * tokens_per_step)
