"""Self-consistency with early agreement: n = 8 samples per GSM8K question, with and without
stop_when_agreed, on the bundled demo model (offline LLM.chat, bf16).

Per mode: output tokens generated over all samples, wall time, the share of questions whose
samples agreed early, and how often the consensus answer (the vote over the finished samples'
"The answer is N.") equals GSM8K's answer, next to how often one sample's does. The demo model's
arithmetic is mostly wrong (docs/demo-models.md): the accuracy columns show the mechanism, not a
capable model. Modes alternate over --repeats runs (fresh seeds each run, the same in both modes);
the machine is measured in the same run.

    .venv/bin/python benchmarks/self_consistency.py --json docs/figures/self_consistency.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import machine  # noqa: E402

ANSWER_PATTERN = r"answer is\s*(-?[\d,]*\.?\d+)"


def gold_answer(record: dict) -> str:
    return record["answer"].rsplit("####", 1)[1].strip().replace(",", "")


def run_mode(llm, questions, golds, args, agree: int | None, seed: int) -> dict:
    from corral import SamplingParams
    from corral.engine.consensus import compile_answer_pattern, extract_answer

    pattern = compile_answer_pattern(ANSWER_PATTERN)
    params = [
        SamplingParams(
            n=args.n,
            temperature=args.temperature,
            max_tokens=args.max_tokens,
            seed=seed + 1000 * index,
            stop_when_agreed=agree,
            answer_pattern=ANSWER_PATTERN,
        )
        for index in range(len(questions))
    ]
    conversations = [[{"role": "user", "content": q}] for q in questions]
    start = time.perf_counter()
    outputs = llm.chat(conversations, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    num_tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    consensus_right = sum(o.consensus.answer == g for o, g in zip(outputs, golds))
    first_right = sum(
        extract_answer(o.outputs[0].text, pattern) == g for o, g in zip(outputs, golds)
    )
    return {
        "stop_when_agreed": agree,
        "output_tokens": num_tokens,
        "elapsed_s": elapsed,
        "agreed_early": sum(o.consensus.agreed_early for o in outputs) / len(outputs),
        "consensus_accuracy": consensus_right / len(outputs),
        "one_sample_accuracy": first_right / len(outputs),
        "answered": statistics.mean(o.consensus.num_answered for o in outputs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-questions", type=int, default=48)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--agree", type=int, default=2, help="stop_when_agreed")
    parser.add_argument("--temperature", type=float, default=0.3)
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-num-seqs", type=int, default=16, help="the engine's seats")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from corral import LLM
    from corral.workloads.data import gsm8k_records

    records = gsm8k_records("test", max_num_records=args.num_questions)
    questions = [r["question"] for r in records]
    golds = [gold_answer(r) for r in records]
    llm = LLM(dtype="bfloat16", max_num_seqs=args.max_num_seqs, num_threads=0)
    run_mode(llm, questions[:2], golds[:2], args, None, 99)  # warm-up
    rows = []
    for repeat in range(args.repeats):
        for agree in (None, args.agree):
            row = run_mode(llm, questions, golds, args, agree, seed=repeat)
            row["repeat"] = repeat
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("| stop_when_agreed | output tokens | time s | agreed early | consensus right | "
          "one sample right |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['stop_when_agreed'] or 'off'} | {row['output_tokens']} | "
            f"{row['elapsed_s']:.1f} | {100 * row['agreed_early']:.0f}% | "
            f"{100 * row['consensus_accuracy']:.1f}% | {100 * row['one_sample_accuracy']:.1f}% |"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        result = {"machine": machine(), "args": vars(args) | {"json": None}, "rows": rows}
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
