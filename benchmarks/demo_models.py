"""Decode speed of the bundled demo models (corral-demo and corral-demo-draft) in corral, with
transformers' `generate` on the same weights, prompts and dtype as the baseline of the same run.

Prompts: held-out GSM8K test questions in the models' chat template (a fixed question when the
data is absent). Every request decodes exactly --max-tokens tokens (EOS ignored, no detokenizing).
Decode rate = batch * (N - 1) / (t(N tokens) - t(1 token)): prefill and the first token are
subtracted, so the figure is the steady decode speed. Median of --repeats runs. OpenMP waits
passively unless OMP_WAIT_POLICY says otherwise (see below).

    .venv/bin/python benchmarks/demo_models.py                  # print the table
    .venv/bin/python benchmarks/demo_models.py --update-cards   # also into the model cards
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

# Read by OpenMP when torch loads: on cores shared with other jobs, spinning workers stall each
# other (decode measured over 10x slower); waiting passively keeps the figures stable.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from corral.demo import BUNDLED_MODELS_DIR  # noqa: E402

MODEL_NAMES = ("corral-demo", "corral-demo-draft")
COMMAND = ".venv/bin/python benchmarks/demo_models.py --update-cards"
_FALLBACK_QUESTION = "Tom has 3 boxes with 12 apples in each. He eats 5 apples. How many are left?"


def chat_prompts(model_dir: Path, num_prompts: int) -> list[list[int]]:
    from transformers import AutoTokenizer

    from corral.demo.corpus import load_gsm8k

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    try:
        questions = [e.question for e in load_gsm8k("test", max_num_examples=num_prompts)]
    except FileNotFoundError:
        questions = [_FALLBACK_QUESTION] * num_prompts
    return [
        tokenizer.encode(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False
            ),
            add_special_tokens=False,
        )
        for q in questions
    ]


def _decode_rate(run, batch_size: int, max_tokens: int, repeats: int) -> float:
    """batch * (N - 1) / (t(N) - t(1)), median over repeats; run(n) generates n tokens each."""
    run(2)  # warm-up
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(1)
        first_s = time.perf_counter() - start
        start = time.perf_counter()
        run(max_tokens)
        full_s = time.perf_counter() - start
        rates.append(batch_size * (max_tokens - 1) / max(full_s - first_s, 1e-9))
    return statistics.median(rates)


def corral_rate(model_dir: Path, dtype: str, prompts, max_tokens: int, repeats: int) -> float:
    from corral import LLM, SamplingParams

    llm = LLM(model=str(model_dir), dtype=dtype, num_threads=torch.get_num_threads())

    def run(num_tokens: int) -> None:
        params = SamplingParams(
            temperature=0, max_tokens=num_tokens, ignore_eos=True, detokenize=False
        )
        outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        assert all(len(o.outputs[0].token_ids) == num_tokens for o in outputs)

    return _decode_rate(run, len(prompts), max_tokens, repeats)


def transformers_rate(model_dir: Path, dtype: str, prompt, max_tokens: int, repeats: int) -> float:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    model.eval()
    input_ids = torch.tensor([prompt])

    def run(num_tokens: int) -> None:
        with torch.inference_mode():
            model.generate(
                input_ids, max_new_tokens=num_tokens, min_new_tokens=num_tokens,
                do_sample=False, eos_token_id=None, pad_token_id=0,
            )  # fmt: skip

    return _decode_rate(run, 1, max_tokens, repeats)


def _hardware() -> str:
    import os

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {torch.get_num_threads()} threads"
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs, {torch.get_num_threads()} threads"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=BUNDLED_MODELS_DIR)
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--num-threads", type=int, default=2)
    parser.add_argument("--update-cards", action="store_true",
                        help="write decode_speed.json into each model directory and re-render "
                        "its README.md")  # fmt: skip
    args = parser.parse_args(argv)
    if args.max_tokens < 2:
        raise ValueError(f"--max-tokens must be >= 2, got {args.max_tokens}")
    torch.set_num_threads(args.num_threads)
    dtypes = args.dtypes.split(",")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    results: dict[str, list[dict]] = {}
    print("| model | engine | dtype | batch | decode tokens/s | corral / transformers |")
    print("|---|---|---|---|---|---|")
    for name in MODEL_NAMES:
        model_dir = args.models_dir / name
        prompts = chat_prompts(model_dir, max(batch_sizes))
        rows = []
        for dtype in dtypes:
            baseline = transformers_rate(
                model_dir, dtype, prompts[0], args.max_tokens, args.repeats
            )
            rows.append(dict(engine="transformers", dtype=dtype, batch_size=1,
                             output_tokens_per_s=baseline))  # fmt: skip
            print(f"| {name} | transformers | {dtype} | 1 | {baseline:.0f} | |", flush=True)
            for batch_size in batch_sizes:
                rate = corral_rate(
                    model_dir, dtype, prompts[:batch_size], args.max_tokens, args.repeats
                )
                rows.append(dict(engine="corral", dtype=dtype, batch_size=batch_size,
                                 output_tokens_per_s=rate))  # fmt: skip
                ratio = f"{rate / baseline:.2f}x" if batch_size == 1 else ""
                print(f"| {name} | corral | {dtype} | {batch_size} | {rate:.0f} | {ratio} |",
                      flush=True)  # fmt: skip
        results[name] = rows
    target = {(r["engine"], r["dtype"], r["batch_size"]): r for r in results[MODEL_NAMES[0]]}
    for row in results[MODEL_NAMES[1]]:
        base = target[(row["engine"], row["dtype"], row["batch_size"])]["output_tokens_per_s"]
        print(f"draft / target, {row['engine']} {row['dtype']} batch {row['batch_size']}: "
              f"{row['output_tokens_per_s'] / base:.2f}x")  # fmt: skip
    if args.update_cards:
        from corral.demo.model_card import SPEED_FILE, write_card

        for name, rows in results.items():
            record = dict(command=COMMAND, hardware=_hardware(), max_tokens=args.max_tokens,
                          omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"),
                          date=datetime.date.today().isoformat(), rows=rows)  # fmt: skip
            (args.models_dir / name / SPEED_FILE).write_text(json.dumps(record, indent=1) + "\n")
            print(write_card(args.models_dir / name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
