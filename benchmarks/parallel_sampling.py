"""Parallel sampling: n = 8 samples of one prompt with shared against unshared prompt KV blocks.

Model: the bundled demo model (corral.demo, 4 layers, hidden 256, context 512), bfloat16 unless
--dtype says otherwise, offline (LLM / LLMEngine, stepped by hand). Workload: one request of n = 8
samples (temperature 1.0, seeds seed + i, EOS ignored) with a prompt of 448 random tokens and 64
output tokens (448 + 64 = the model's 512-token context), prefix cache emptied before each run.

"shared" is the default engine: one sample computes the prompt's full blocks, the others wait
for them and take them as prefix hits (corral/core/sibling_admission.py). "unshared" is
share_sibling_prompts=False (--no-share-sibling-prompts): all 8 compute the whole prompt in the
first step. Per run: prompt tokens computed (n x prompt - prefix-hit tokens), peak KV blocks held
by the samples (distinct blocks over their block tables, after each step), the prompt's KV blocks
after every sample has started, time to first token of the last sample and the mean over
samples, and total time. Each mode runs `repeats` times after a warm-up run, alternating; times
are medians. The machine (CPU, cores, load average) is measured in the same run.

Target (issue 21): prompt KV memory divided by n.

    .venv/bin/python benchmarks/parallel_sampling.py          # about a minute on 2 cores
    .venv/bin/python benchmarks/parallel_sampling.py --quick  # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import machine  # noqa: E402
from corral import LLM, SamplingParams  # noqa: E402
from corral.demo import BUNDLED_MODELS_DIR, DEFAULT_MODEL_NAME  # noqa: E402

FIGURES = REPO / "docs" / "figures" / "parallel_sampling.json"
BLOCK_SIZE = 16
LOAD_AT_START = round(os.getloadavg()[0], 2)  # before this run's own work


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def run_once(llm: LLM, prompt: list[int], params: SamplingParams) -> dict[str, Any]:
    """One n-sample request to the end; the figures of one run."""
    engine = llm.engine
    kv, scheduler = engine.kv_manager, engine.scheduler
    kv.reset_prefix_cache()
    hits_before = kv.stats.prefix_hit_tokens
    start = time.perf_counter()
    engine.add_request("sampled", {"prompt_token_ids": prompt}, params)
    first_token_s: dict[str, float] = {}
    peak_blocks, prompt_blocks = 0, None
    num_prompt_blocks = cdiv(len(prompt), BLOCK_SIZE)
    while engine.has_unfinished_requests():
        engine.step()
        now = time.perf_counter() - start
        requests = list(scheduler.requests.values())
        tables = {r.request_id: kv.block_ids(r.request_id) for r in requests}
        peak_blocks = max(peak_blocks, len({b for t in tables.values() for b in t}))
        for request in requests:
            if request.num_output_tokens > 0:
                first_token_s.setdefault(request.request_id, now)
        if prompt_blocks is None and len(first_token_s) == params.n:
            prompt_blocks = len({b for t in tables.values() for b in t[:num_prompt_blocks]})
    total_s = time.perf_counter() - start
    assert len(first_token_s) == params.n, "a sample finished unseen (max_tokens too small)"
    hits = kv.stats.prefix_hit_tokens - hits_before
    return dict(
        prompt_tokens_computed=params.n * len(prompt) - hits,
        prefix_hit_tokens=hits,
        peak_kv_blocks=peak_blocks,
        prompt_kv_blocks=prompt_blocks,
        ttft_last_sample_s=max(first_token_s.values()),
        ttft_mean_s=statistics.fmean(first_token_s.values()),
        total_s=total_s,
        num_preemptions=scheduler.num_preemptions,
    )


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts from the last run (they do not vary), medians of the times."""
    summary = dict(runs[-1])
    for key in ("ttft_last_sample_s", "ttft_mean_s", "total_s"):
        summary[key] = round(statistics.median(run[key] for run in runs), 4)
        summary[key[:-2] + "_runs_s"] = [round(run[key], 4) for run in runs]
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=448)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a small smoke run (not written)")
    parser.add_argument("--out", type=Path, default=FIGURES)
    args = parser.parse_args()
    if args.quick:
        args.prompt_len, args.max_tokens, args.repeats = 100, 8, 1
    model = str(BUNDLED_MODELS_DIR / DEFAULT_MODEL_NAME)
    prompt = [random.Random(0).randrange(10, 4000) for _ in range(args.prompt_len)]
    params = SamplingParams(
        n=args.n, temperature=1.0, seed=1, max_tokens=args.max_tokens, ignore_eos=True
    )
    engines = {
        mode: LLM(
            model=model,
            dtype=args.dtype,
            device=args.device,
            block_size=BLOCK_SIZE,
            num_blocks=args.n * cdiv(args.prompt_len + args.max_tokens, BLOCK_SIZE) + 16,
            max_num_batched_tokens=args.n * args.prompt_len,
            share_sibling_prompts=mode == "shared",
        )
        for mode in ("shared", "unshared")
    }
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in engines}
    outputs: dict[str, list[list[int]]] = {}
    for mode, llm in engines.items():  # warm-up (kernels, allocator); also the outputs check
        run_once(llm, prompt, params)
        result = llm.generate({"prompt_token_ids": prompt}, params, use_tqdm=False)[0]
        outputs[mode] = [completion.token_ids for completion in result.outputs]
    for _ in range(args.repeats):
        for mode, llm in engines.items():
            runs[mode].append(run_once(llm, prompt, params))
    shared, unshared = summarize(runs["shared"]), summarize(runs["unshared"])
    ideal_blocks = cdiv(args.prompt_len, BLOCK_SIZE)  # the prompt's KV once
    document = dict(
        benchmark="parallel_sampling",
        machine=machine(
            device=args.device, dtype=args.dtype, load_average_1m_at_start=LOAD_AT_START
        ),
        workload=dict(
            model=DEFAULT_MODEL_NAME,
            n=args.n,
            prompt_tokens=args.prompt_len,
            output_tokens=args.max_tokens,
            block_size=BLOCK_SIZE,
            temperature=1.0,
            repeats=args.repeats,
        ),
        shared=shared,
        unshared=unshared,
        samples_identical_across_modes=outputs["shared"] == outputs["unshared"],
        prompt_kv_ratio_unshared_over_shared=round(
            unshared["prompt_kv_blocks"] / shared["prompt_kv_blocks"], 3
        ),
        target_prompt_kv_blocks=ideal_blocks,
        target_met=shared["prompt_kv_blocks"] <= ideal_blocks,
        per_sample_partial_block_cost_blocks=shared["prompt_kv_blocks"]
        - (args.prompt_len - 1) // BLOCK_SIZE,
        ttft_speedup=round(unshared["ttft_last_sample_s"] / shared["ttft_last_sample_s"], 3),
        total_speedup=round(unshared["total_s"] / shared["total_s"], 3),
    )
    print(json.dumps(document, indent=1))
    if not args.quick:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(document, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
