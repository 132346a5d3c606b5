"""Where a batched round's time goes: one offline round of N prompts (random token ids) x M greedy
tokens, profiled with cProfile over the per-layer Python path (the C++ layer loop is switched off
for the profiled round, so that every kernel call shows by itself), after a warm-up round and an
unprofiled timed round with the layer loop on. Prints the calls by total time and the shares of
the kernel groups (linears, LM head, decode and prefill attention, the rest).

    .venv/bin/python -m benchmarks.round_profile --model .peers/models/bench-smollm-135m-random \\
        --quantization int8
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import random
import time
from pathlib import Path

from corral import LLM, SamplingParams

# (the end of a profiled function's name, its group): the kernels by their own time (cProfile
# names a built-in "<built-in method module.name>"), the prefill attention by its cumulative time.
GROUPS = (
    (".int8_linear>", "linears"),
    (".few_row_linear>", "bf16 kernel linears (a bf16 model's, or an int8 model's LM head)"),
    (".paged_decode_attention>", "decode attention"),
    ("_prefill_matmul", "prefill attention"),
)


def prompts(num_prompts: int, prompt_len: int, vocab: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [
        {"prompt_token_ids": [rng.randrange(1, vocab) for _ in range(prompt_len)]}
        for _ in range(num_prompts)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: the bundled corral-demo")
    parser.add_argument("--quantization", default=None)
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    llm = LLM(model=args.model, dtype="bfloat16", num_blocks=4096, block_size=16,
              max_num_seqs=args.num_prompts, quantization=args.quantization)  # fmt: skip
    vocab = llm.engine.executor.model.arch.vocab_size
    params = SamplingParams(
        temperature=0, max_tokens=args.max_tokens, ignore_eos=True, detokenize=False
    )
    num_tokens = args.num_prompts * args.max_tokens

    def run(seed: int) -> float:
        batch = prompts(args.num_prompts, args.prompt_len, vocab, seed)
        start = time.perf_counter()
        llm.generate(batch, params, use_tqdm=False)
        return time.perf_counter() - start

    run(1)  # warm-up
    timed_s = run(2)
    import corral.model.models.llama as llama_module

    loop = llama_module.layer_loop_weights
    llama_module.layer_loop_weights = lambda *_: None  # the per-layer path, kernel by kernel
    profile = cProfile.Profile()
    profile.enable()
    profiled_s = run(3)
    profile.disable()
    llama_module.layer_loop_weights = loop
    stats = pstats.Stats(profile)
    groups: dict[str, float] = {}
    for (_, _, name), (_, _, own_s, cumulative_s, _) in stats.stats.items():  # type: ignore[attr-defined]
        for entry, group in GROUPS:
            if name.endswith(entry):
                spent_s = own_s if entry.endswith(">") else cumulative_s
                groups[group] = groups.get(group, 0.0) + spent_s
    groups["the rest"] = profiled_s - sum(groups.values())
    result = {
        "model": args.model or "corral-demo",
        "quantization": args.quantization,
        "round_s": timed_s,
        "tok_s": num_tokens / timed_s,
        "profiled_round_s": profiled_s,
        "groups_s": groups,
        "shares": {key: value / profiled_s for key, value in groups.items()},
    }
    print(json.dumps(result, indent=1))
    stats.sort_stats("tottime").print_stats(args.top)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
