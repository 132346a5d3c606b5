"""KV cache quantization quality and capacity: int8 / fp8 KV against a float32 KV cache.

Quality: sequences generated greedily with the float32 KV are scored again, teacher-forced, in
small chunks so that almost every position attends to context read back from the quantized
cache; reported: top-1 agreement of the next-token argmax and mean KL(fp32 KV || quantized KV).
Capacity: tokens the pool holds at the same memory budget, against bfloat16 and float32 KV.

    .venv/bin/python -m benchmarks.kv_quant_quality --model DIR
"""

from __future__ import annotations

import argparse
import random

import torch

from corral import LLM, SamplingParams


def teacher_forced_logprobs(llm: LLM, token_ids: list[int]) -> torch.Tensor:
    """Log-softmax over the vocabulary at positions 0 .. len-2, [len - 1, vocab]."""
    model = llm.engine.executor.model
    captured: list[torch.Tensor] = []
    original = model.compute_logits

    def capture(hidden: torch.Tensor) -> torch.Tensor:
        logits = original(hidden)
        captured.append(logits.clone())
        return logits

    model.compute_logits = capture
    try:
        params = SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=0)
        llm.generate({"prompt_token_ids": token_ids}, params, use_tqdm=False)
    finally:
        del model.compute_logits
    rows = torch.cat(captured)[: len(token_ids) - 1]  # the last call sampled the next token
    return torch.log_softmax(rows.float(), dim=-1)


def compare(reference: LLM, candidate: LLM, sequences: list[list[int]]) -> dict[str, float]:
    agree = total = 0
    kl_sum = 0.0
    for tokens in sequences:
        p = teacher_forced_logprobs(reference, tokens)
        q = teacher_forced_logprobs(candidate, tokens)
        agree += int((p.argmax(-1) == q.argmax(-1)).sum())
        total += p.shape[0]
        kl_sum += float((p.exp() * (p - q)).sum())
    return {"top1_agreement": agree / total, "mean_kl": kl_sum / total, "positions": total}


def quality(
    model: str, kv_dtype: str, num_sequences: int = 6, seed: int = 0, chunk: int = 16
) -> dict[str, float]:
    common = dict(
        model=model,
        dtype="float32",
        num_blocks=512,
        max_num_batched_tokens=chunk,
        enable_prefix_caching=False,
    )
    reference = LLM(**common)
    candidate = LLM(**common, kv_cache_dtype=kv_dtype)
    rng = random.Random(seed)
    vocab = reference.engine.vocab_size
    prompts = [
        [rng.randrange(3, vocab) for _ in range(rng.randint(8, 64))] for _ in range(num_sequences)
    ]
    outputs = reference.generate(
        [{"prompt_token_ids": p} for p in prompts],
        SamplingParams(temperature=0, max_tokens=64, ignore_eos=True),
        use_tqdm=False,
    )
    sequences = [p + o.outputs[0].token_ids for p, o in zip(prompts, outputs)]
    return compare(reference, candidate, sequences)


def capacity(model: str, budget: str = "64MiB") -> dict[str, int]:
    tokens = {}
    for dtype, kv in (
        ("bfloat16", "auto"),
        ("float32", "auto"),
        ("bfloat16", "int8"),
        ("bfloat16", "fp8"),
    ):
        llm = LLM(
            model=model, dtype=dtype, kv_cache_memory=budget, kv_cache_dtype=kv, max_num_seqs=10**6
        )
        label = f"{dtype} model, {kv if kv != 'auto' else dtype} KV"
        tokens[label] = llm.engine.kv_manager.num_blocks * llm.engine.config.cache.block_size
    return tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--sequences", type=int, default=6)
    args = parser.parse_args()
    for kv_dtype in ("int8", "fp8"):
        result = quality(args.model, kv_dtype, args.sequences)
        print(
            f"{kv_dtype} KV vs float32 KV: top-1 agreement {result['top1_agreement']:.4f}, "
            f"mean KL {result['mean_kl']:.2e} over {result['positions']} positions"
        )
    for label, num_tokens in capacity(args.model).items():
        print(f"64 MiB pool, {label}: {num_tokens} tokens")


if __name__ == "__main__":
    main()
