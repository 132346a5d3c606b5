"""`corral generate`: generate offline for prompts given as arguments, a file, or stdin."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from corral.engine.engine_args import add_engine_arguments, engine_config_from_args

if TYPE_CHECKING:
    from corral.spec.stats import SpecDecodeStats


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompts", nargs="*", help="prompts (default: one per line on stdin)")
    parser.add_argument("--prompts-file", help="a file with one prompt per line")
    parser.add_argument("--chat", action="store_true", help="treat each prompt as a user message")
    parser.add_argument("--max-tokens", type=int, default=64)
    # Unset sampling flags take the model's generation_config.json values; temperature is 0
    # (greedy) when neither sets it.
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--repetition-penalty", type=float, default=None)
    parser.add_argument("--sample-seed", type=int, default=None, help="per-request sampling seed")
    parser.add_argument("--n", type=int, default=1)
    parser.add_argument("--stop", action="append", default=[])
    parser.add_argument("--json", action="store_true", help="print one JSON object per prompt")
    parser.add_argument(
        "--lora", default=None, metavar="NAME", help="generate with this --lora-modules adapter"
    )
    add_engine_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from corral.llm import LLM

    prompts = list(args.prompts)
    if args.prompts_file:
        with open(args.prompts_file) as handle:
            prompts += [line.rstrip("\n") for line in handle if line.strip()]
    if not prompts:
        prompts = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not prompts:
        print("corral generate: no prompts given", file=sys.stderr)
        return 2
    try:
        engine_config = engine_config_from_args(args)
    except ValueError as error:  # a flag combination refused before the model loads
        print(f"corral generate: {error}", file=sys.stderr)
        return 2
    llm = LLM.from_config(engine_config)
    defaults = llm.engine.input_processor.generation_defaults
    temperature = args.temperature
    if temperature is None and "temperature" not in defaults:
        temperature = 0.0
    params = llm.engine.input_processor.default_sampling_params(
        n=args.n,
        max_tokens=args.max_tokens,
        temperature=temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        repetition_penalty=args.repetition_penalty,
        seed=args.sample_seed,
        stop=args.stop,
    )
    if args.chat:
        outputs = llm.chat(
            [[{"role": "user", "content": p}] for p in prompts], params, lora_request=args.lora
        )
    else:
        outputs = llm.generate(prompts, params, lora_request=args.lora)
    for prompt, output in zip(prompts, outputs):
        if args.json:
            print(
                json.dumps(
                    {
                        "prompt": prompt,
                        "outputs": [
                            {
                                "text": c.text,
                                "token_ids": c.token_ids,
                                "finish_reason": c.finish_reason,
                            }
                            for c in output.outputs
                        ],
                    }
                )
            )
        else:
            for completion in output.outputs:
                print(f"{prompt}{completion.text}")
                print(f"[{completion.finish_reason}, {len(completion.token_ids)} tokens]")
    spec = llm.engine.scheduler.stats().spec_decode
    if spec is not None:
        print(spec_decode_summary(engine_config.speculative.method, spec), file=sys.stderr)
    return 0


def spec_decode_summary(method: str | None, stats: SpecDecodeStats) -> str:
    """One line on speculative decoding over the run: acceptance rate, mean accepted length
    (tokens per verification round), acceptance per draft position."""
    if not stats.num_draft_tokens:
        return f"speculative decoding ({method}): no draft tokens proposed"
    positions = ", ".join(
        f"{count / stats.num_drafts:.2f}" for count in stats.num_accepted_tokens_per_pos
    )
    return (
        f"speculative decoding ({method}): acceptance rate {stats.acceptance_rate:.1%} "
        f"({stats.num_accepted_tokens}/{stats.num_draft_tokens} draft tokens), mean accepted "
        f"length {stats.mean_accepted_length:.2f} over {stats.num_drafts} rounds, per position "
        f"[{positions}]"
    )
