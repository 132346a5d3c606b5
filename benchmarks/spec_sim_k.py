"""Choosing K for speculative decoding with the simulator (docs/speculative-sim.md).

`measure` runs the real engine (the bundled corral-demo target, one torch thread) with each
proposer at a fixed K on GSM8K questions and reports what the simulator needs: acceptance per
draft position (conditional on the earlier ones), how often a proposal came, and the proposer's
time per proposed token. `sweep` simulates a load with the profiled cost models of the target
and the draft on this CPU, at concurrency 1 and 32, for K = 0 (off) to 8 with the fixed rule and
for the adaptive rule, and prints output throughput (virtual time). `validate` runs the real
engine and the simulator on the same requests at a few points and prints both.

    .venv/bin/python -m benchmarks.spec_sim_k measure --repetition-penalty 1.0 --out m.json
    corral simulate profile --model corral-demo --dtype bfloat16 --num-threads 1 \\
        --max-num-batched-tokens 512 --num-kv-blocks 1024 --max-model-len 512 --out target.json
    corral simulate profile --model corral-demo-draft --dtype bfloat16 --num-threads 1 \\
        --max-num-batched-tokens 512 --num-kv-blocks 1024 --max-model-len 512 --out draft.json
    .venv/bin/python -m benchmarks.spec_sim_k sweep --profile target.json \\
        --draft-profile draft.json --measured m.json
    .venv/bin/python -m benchmarks.spec_sim_k validate --profile target.json \\
        --draft-profile draft.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/demo_models.py

METHODS = ("draft", "ngram", "suffix")
CONCURRENCIES = (1, 32)
MAX_K = 8


# ----- measure: the real engine ----------------------------------------------------------------


class _ProposeTimer:
    """Stands in for the engine's executor: forwards, and adds up the proposer's time."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.propose_s = 0.0
        self.num_propose_steps = 0
        self.num_proposed = 0
        self.num_asked = 0
        self.num_requests_asked = 0
        self.num_requests_proposed = 0

    def execute(self, scheduler_output):
        output = self.inner.execute(scheduler_output)
        if scheduler_output.num_spec_tokens_to_propose:
            self.num_propose_steps += 1
            self.propose_s += output.propose_time_s
            self.num_asked += sum(scheduler_output.num_spec_tokens_to_propose.values())
            self.num_proposed += sum(len(ids) for ids in output.spec_token_ids.values())
            self.num_requests_asked += len(scheduler_output.num_spec_tokens_to_propose)
            self.num_requests_proposed += sum(1 for ids in output.spec_token_ids.values() if ids)
        return output

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def conditional_acceptance(stats) -> list[float]:
    """P(draft j accepted | drafts before it accepted), from the per-position counts (rounds
    whose draft j was accepted; every round carried K drafts where K is fixed and the proposer
    had that many, so the rounds reaching position j are those accepting j - 1)."""
    reached = [stats.num_drafts] + list(stats.num_accepted_tokens_per_pos)
    return [
        accepted / previous if previous else 0.0
        for previous, accepted in zip(reached, stats.num_accepted_tokens_per_pos)
    ]


def draft_loop_s(llm, context_tokens: int = 256, repeats: int = 300) -> list[float]:
    """The engine's greedy draft loop at one row (corral/model/layer_loop.py decode_greedy), on
    the draft model of llm's proposer: [a call with one pass, each further pass] in seconds,
    medians over repeats, at context_tokens of context. Run after llm's requests are done (it
    writes the KV of free blocks)."""
    import torch

    from corral.model.kernels import cpu_kernels
    from corral.model.layer_loop import decode_greedy

    proposer = llm.engine.core.executor.proposer
    kernels = cpu_kernels()
    block_size = proposer.block_size
    table = list(range(1, (context_tokens + 8) // block_size + 2))
    tokens = [5 + i % 4000 for i in range(context_tokens)]
    caches = proposer.storage.layer_caches

    def call(num_steps: int) -> float:
        start = time.perf_counter()
        decode_greedy(proposer.model, kernels, caches, [([7], context_tokens, table)],
                      block_size, num_steps)  # fmt: skip
        return time.perf_counter() - start

    with torch.inference_mode():
        for first in range(0, context_tokens, 8):  # the context's KV
            chunk = tokens[first : first + 8]
            decode_greedy(proposer.model, kernels, caches, [(chunk, first, table)], block_size, 1)
        for _ in range(20):
            call(1), call(5)
        one = statistics.median(call(1) for _ in range(repeats))
        five = statistics.median(call(5) for _ in range(repeats))
    return [one, max(five - one, 0.0) / 4]


def measure(args: argparse.Namespace) -> dict:
    from benchmarks.demo_models import chat_prompts
    from corral.demo import BUNDLED_MODELS_DIR
    from corral.llm import LLM
    from corral.sampling_params import SamplingParams

    prompts = chat_prompts(BUNDLED_MODELS_DIR / "corral-demo", args.num_prompts)
    results: dict[str, dict] = {}
    for method in METHODS:
        llm = LLM(
            dtype="bfloat16",
            num_threads=1,
            max_num_seqs=args.max_num_seqs,
            speculative_method=method,
            num_speculative_tokens=args.k,
            speculative_tokens_rule="fixed",
            speculative_model="corral-demo-draft" if method == "draft" else None,
        )
        timer = _ProposeTimer(llm.engine.core.executor)
        llm.engine.core.executor = timer
        params = SamplingParams(
            temperature=0.0,
            max_tokens=args.max_tokens,
            repetition_penalty=args.repetition_penalty,
        )
        start = time.perf_counter()
        outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        wall_s = time.perf_counter() - start
        stats = llm.engine.core.scheduler.stats().spec_decode
        num_output = sum(len(o.outputs[0].token_ids) for o in outputs)
        results[method] = {
            "acceptance": conditional_acceptance(stats),
            "acceptance_rate": stats.acceptance_rate,
            "mean_accepted_length": stats.mean_accepted_length,
            "num_drafts": stats.num_drafts,
            "num_accepted_tokens_per_pos": stats.num_accepted_tokens_per_pos,
            # Proposals that came, per token asked for (ngram finds no match sometimes).
            "proposed_per_asked": timer.num_proposed / max(timer.num_asked, 1),
            "proposal_rate": timer.num_requests_proposed / max(timer.num_requests_asked, 1),
            "propose_s_per_step": timer.propose_s / max(timer.num_propose_steps, 1),
            "propose_s_per_token": timer.propose_s / max(timer.num_proposed, 1),
            "num_output_tokens": num_output,
            "wall_s": wall_s,
        }
        if method == "draft":
            results[method]["draft_loop_s"] = draft_loop_s(llm)
        print(f"{method}: {json.dumps(results[method])}", flush=True)
    document = {
        "command": "benchmarks/spec_sim_k.py measure",
        "k": args.k,
        "num_prompts": args.num_prompts,
        "max_tokens": args.max_tokens,
        "max_num_seqs": args.max_num_seqs,
        "repetition_penalty": args.repetition_penalty,
        "methods": results,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(document, indent=1))
    return document


# ----- sweep: the simulator --------------------------------------------------------------------


def _acceptance_of(method: str, measured: dict | None) -> tuple[float, ...]:
    """The measured acceptance per position (at most MAX_K), else the simulator's default."""
    from corral.sim.spec import DEFAULT_ACCEPTANCE

    if measured and method in measured["methods"]:
        values = [v for v in measured["methods"][method]["acceptance"] if v > 0]
        if values:
            return tuple(round(v, 3) for v in values[:MAX_K])
    return DEFAULT_ACCEPTANCE[method]


def simulate_once(args, method: str, k: int, rule: str, concurrency: int, seed: int) -> dict:
    from corral.config import SchedulerConfig, SpeculativeConfig
    from corral.sim.api import simulate_result
    from corral.sim.cost.profiled import ProfiledCostModel
    from corral.sim.deployment import DeploymentOptions
    from corral.sim.report import build_report
    from corral.sim.spec import make_spec_sim_config
    from corral.workloads import ArrivalOptions, WorkloadOptions, build_workload

    speculation = None
    if k > 0:
        config = SpeculativeConfig(
            method=method,
            num_speculative_tokens=k,
            num_tokens_rule=rule,
            model="corral-demo-draft" if method == "draft" else None,
        )
        measured = args.measured_document
        costs: dict = {}
        if method == "draft" and args.roofline_model:
            costs["draft_cost_ratio"] = args.draft_cost_ratio
        elif method == "draft":
            costs["draft_cost_model"] = ProfiledCostModel.load(args.draft_profile)
            loop = measured["methods"].get("draft", {}).get("draft_loop_s") if measured else None
            if loop and not args.price_draft_passes_as_steps:
                costs["draft_loop_s"] = tuple(loop)
        elif measured and method in measured["methods"]:
            costs["propose_s_per_token"] = measured["methods"][method]["propose_s_per_token"]
            costs["proposal_rate"] = measured["methods"][method]["proposal_rate"]
        speculation = make_spec_sim_config(config, _acceptance_of(method, measured), **costs)
    num_requests = args.requests_per_slot * concurrency
    workload = build_workload(
        WorkloadOptions(
            dataset="random",
            num_requests=num_requests,
            input_len=args.input_len,
            output_len=args.output_len,
            range_ratio=0.5,
            seed=seed,
            arrival=ArrivalOptions("burst"),
            vocab_size=4096,
        )
    )
    deployment = DeploymentOptions(
        cost_model="roofline" if args.roofline_model else "profiled",
        profile_path=args.profile,
        model=args.roofline_model or "llama-3.1-8b",
        hardware=args.roofline_hardware,
        max_model_len=4096 if args.roofline_model else None,
        scheduler=SchedulerConfig(
            max_num_seqs=concurrency, max_num_batched_tokens=args.max_num_batched_tokens
        ),
        seed=seed,
        speculation=speculation,
    )
    result = simulate_result(workload, deployment)
    report = build_report(result)
    stats = report.spec_decode
    return {
        "output_tok_s": report.summary.output_throughput,
        "mean_k": stats.num_planned_tokens / max(stats.num_planned_requests, 1) if stats else 0.0,
        "tokens_per_round": stats.mean_accepted_length if stats and stats.num_drafts else 1.0,
        "num_rounds": stats.num_drafts if stats else 0,
    }


def sweep(args: argparse.Namespace) -> dict:
    args.measured_document = json.loads(Path(args.measured).read_text()) if args.measured else None
    rows: dict[str, dict] = {}
    settings = [(k, "fixed") for k in range(MAX_K + 1)] + [(MAX_K, "adaptive")]
    for method in args.methods.split(","):
        for concurrency in CONCURRENCIES:
            for k, rule in settings:
                runs = [
                    simulate_once(args, method, k, rule, concurrency, seed)
                    for seed in range(args.num_seeds)
                ]
                label = "adaptive" if rule == "adaptive" else f"K={k}"
                key = f"{method} c={concurrency} {label}"
                rows[key] = {name: statistics.mean(run[name] for run in runs) for name in runs[0]}
                print(
                    f"{method:<7} c={concurrency:<3} {label:<9} "
                    f"{rows[key]['output_tok_s']:8.1f} tok/s   mean K {rows[key]['mean_k']:.2f}   "
                    f"tokens/round {rows[key]['tokens_per_round']:.2f}   "
                    f"rounds {rows[key]['num_rounds']:.0f}",
                    flush=True,
                )
    document = {"args": {k: v for k, v in vars(args).items() if k != "measured_document"}}
    document["rows"] = rows
    if args.out:
        Path(args.out).write_text(json.dumps(document, indent=1))
    return document


# ----- validate: the simulator against the real engine ---------------------------------------

VALIDATE_POINTS = ((1, 0), (1, 4), (8, 0), (8, 4))  # (concurrency, K of the draft, fixed)


def _real_throughput(prompts: list[list[int]], concurrency: int, k: int, max_tokens: int):
    from corral.llm import LLM
    from corral.sampling_params import SamplingParams

    spec = {}
    if k:
        spec = dict(
            speculative_method="draft",
            num_speculative_tokens=k,
            speculative_tokens_rule="fixed",
            speculative_model="corral-demo-draft",
        )
    llm = LLM(dtype="bfloat16", num_threads=1, max_num_seqs=concurrency, **spec)
    timer = _ProposeTimer(llm.engine.core.executor)
    llm.engine.core.executor = timer
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    requests = [{"prompt_token_ids": p} for p in prompts]
    llm.generate(requests[:concurrency], params, use_tqdm=False)  # warm-up
    start = time.perf_counter()
    llm.generate(requests, params, use_tqdm=False)
    wall_s = time.perf_counter() - start
    stats = llm.engine.core.scheduler.stats().spec_decode
    loop = draft_loop_s(llm) if k else None
    return len(prompts) * max_tokens / wall_s, stats, loop


def validate(args: argparse.Namespace) -> dict:
    """The real engine and the simulator on the same requests: the demo pair, greedy, EOS
    ignored; the simulator with the profiles and the acceptance the real run measured."""
    from benchmarks.demo_models import chat_prompts
    from corral.config import SchedulerConfig, SpeculativeConfig
    from corral.demo import BUNDLED_MODELS_DIR
    from corral.sim.api import simulate
    from corral.sim.cost.profiled import ProfiledCostModel
    from corral.sim.deployment import DeploymentOptions
    from corral.workloads.spec import RequestSpec, Workload

    prompts = chat_prompts(BUNDLED_MODELS_DIR / "corral-demo", args.num_prompts)
    specs = [
        RequestSpec(f"v{i}", 0.0, len(p), args.max_tokens, prompt_token_ids=tuple(p))
        for i, p in enumerate(prompts)
    ]
    workload = Workload("gsm8k-demo", specs, 4096)
    rows = []
    for concurrency, k in VALIDATE_POINTS:
        real_tok_s, stats, loop = _real_throughput(prompts, concurrency, k, args.max_tokens)
        speculation = None
        if k:
            from corral.sim.spec import make_spec_sim_config

            config = SpeculativeConfig(
                method="draft", num_speculative_tokens=k, num_tokens_rule="fixed", model="d"
            )
            acceptance = tuple(a for a in conditional_acceptance(stats) if a > 0) or (0.72,)
            speculation = make_spec_sim_config(
                config,
                acceptance,
                draft_cost_model=ProfiledCostModel.load(args.draft_profile),
                draft_loop_s=None if args.price_draft_passes_as_steps else tuple(loop),
            )
        deployment = DeploymentOptions(
            cost_model="profiled",
            profile_path=args.profile,
            scheduler=SchedulerConfig(max_num_seqs=concurrency, max_num_batched_tokens=512),
            speculation=speculation,
        )
        sim_tok_s = simulate(workload, deployment).summary.output_throughput
        row = {
            "concurrency": concurrency,
            "k": k,
            "real_tok_s": real_tok_s,
            "sim_tok_s": sim_tok_s,
            "error": sim_tok_s / real_tok_s - 1,
            "real_tokens_per_round": stats.mean_accepted_length if stats else 1.0,
        }
        rows.append(row)
        print(
            f"c={concurrency} K={k}: real {real_tok_s:7.1f} tok/s   sim {sim_tok_s:7.1f} tok/s   "
            f"error {row['error']:+.1%}",
            flush=True,
        )
    document = {"args": vars(args), "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(document, indent=1))
    return document


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    m = commands.add_parser("measure", help="acceptance and proposer cost on the real engine")
    m.add_argument("--num-prompts", type=int, default=32)
    m.add_argument("--max-tokens", type=int, default=128)
    m.add_argument("--max-num-seqs", type=int, default=8)
    m.add_argument("--k", type=int, default=MAX_K)
    m.add_argument("--repetition-penalty", type=float, default=1.2, help="the demo's default")
    m.add_argument("--out", default=None)
    s = commands.add_parser("sweep", help="throughput against K in the simulator")
    s.add_argument("--profile", default=None, help="the target's profile")
    s.add_argument("--draft-profile", default=None, help="the draft model's profile")
    s.add_argument("--roofline-model", default=None, help="instead of profiles: roofline")
    s.add_argument("--roofline-hardware", default="h100")
    s.add_argument("--draft-cost-ratio", type=float, default=0.15, help="roofline's draft")
    s.add_argument("--max-num-batched-tokens", type=int, default=512)
    s.add_argument("--measured", default=None, help="the JSON of `measure`")
    s.add_argument("--methods", default=",".join(METHODS))
    s.add_argument("--input-len", type=int, default=128)
    s.add_argument("--output-len", type=int, default=128)
    s.add_argument("--requests-per-slot", type=int, default=8)
    s.add_argument("--num-seeds", type=int, default=3)
    s.add_argument("--out", default=None)
    s.add_argument(
        "--price-draft-passes-as-steps",
        action="store_true",
        help="price every draft pass as a step of the draft's profile (before the loop's costs)",
    )
    v = commands.add_parser("validate", help="the simulator against the real engine")
    v.add_argument("--profile", required=True, help="the target's profile")
    v.add_argument("--draft-profile", required=True, help="the draft model's profile")
    v.add_argument("--num-prompts", type=int, default=16)
    v.add_argument("--max-tokens", type=int, default=96)
    v.add_argument("--out", default=None)
    v.add_argument(
        "--price-draft-passes-as-steps",
        action="store_true",
        help="price every draft pass as a step of the draft's profile (before the loop's costs)",
    )
    args = parser.parse_args()
    {"measure": measure, "sweep": sweep, "validate": validate}[args.command](args)


if __name__ == "__main__":
    main()
