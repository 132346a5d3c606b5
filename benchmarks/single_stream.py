"""Single-stream decode latency of the offline engine: one request (16-token prompt, --tokens
generated greedily, EOS ignored) on the SmolLM-135M-shaped bf16 reference model, per thread
count, after a warm-up request; milliseconds per output token, best of --rounds.

    .venv/bin/python benchmarks/single_stream.py --threads 1,2 --quantizations none,int8
"""

from __future__ import annotations

import argparse
import os
import random
import time

from corral import LLM, SamplingParams
from corral.bench.reference import smollm_shaped_model


def ms_per_token(threads: int, tokens: int, rounds: int, quantization: str | None) -> float:
    llm = LLM(
        model=str(smollm_shaped_model()),
        dtype="bfloat16",
        max_model_len=512,
        num_threads=threads,
        quantization=quantization,
    )
    params = SamplingParams(max_tokens=tokens, ignore_eos=True, temperature=0)
    rng = random.Random(threads)

    def prompt() -> dict:  # fresh ids each time: no prefix-cache hits
        return {"prompt_token_ids": [rng.randrange(3, 2000) for _ in range(16)]}

    llm.generate([prompt()], params, use_tqdm=False)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        llm.generate([prompt()], params, use_tqdm=False)
        best = min(best, (time.perf_counter() - start) / tokens * 1000)
    llm.shutdown()
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quantizations", default="none", help="e.g. none,int8")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()}")
    for quantization in args.quantizations.split(","):
        for threads in [int(t) for t in args.threads.split(",")]:
            ms = ms_per_token(threads, args.tokens, args.rounds, quantization)
            print(f"{quantization}, {threads} thread(s): {ms:.1f} ms/token", flush=True)


if __name__ == "__main__":
    main()
