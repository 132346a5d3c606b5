"""Structured output on the bundled demo model: what grammar-constrained decoding (xgrammar)
costs per token against unconstrained decoding of the same number of tokens, how long grammars
take to compile, and the grammar library's mask cost per token alone (xgrammar, and llguidance
when it is importable; it is not a dependency).

1. Overhead. Each workload (a JSON schema, a regex; greedy) runs under its constraint first; the
   unconstrained baseline runs the same prompts with max_tokens set per request to the
   constrained output's length and ignore_eos, so both sample the same number of tokens in the
   same batch shapes. Concurrency 1 sends the prompts one after another; concurrency 32 submits
   32 at once (max_num_seqs=32). Decode time = time - time of the same run with max_tokens=1.
   The two configurations take turns within each repeat (order alternating; prefix cache reset
   before every run); overhead = constrained decode time / unconstrained decode time - 1 within
   a repeat (equal token counts), median and range over --repeats; decode tok/s from the median
   times. Then one instrumented run of each splits a model step into forward and sampling.
2. Compile. A fresh XGrammarBackend per repeat (its construction builds xgrammar's tokenizer
   info), each constraint compiled cold, then again (corral's cache); medians.
3. Mask cost. The batch-32 constrained outputs of 1, replayed through a bare matcher: fill the
   next-token bitmask, accept the token; per token. Then the engine's whole per-step mask path
   at batch 32 (sample_mask's allocate and fills, the empty-row check, apply, accept), and the
   apply kernel alone by how many tokens a row allows.

Workloads and schemas: structured_output_schemas.py; parts 2 and 3: structured_output_grammars.py.

    .venv/bin/python benchmarks/structured_output.py            # about 5 minutes on 2 cores
    .venv/bin/python benchmarks/structured_output.py --quick    # smoke test
    .venv/bin/python benchmarks/structured_output.py --simulate # the simulator's prediction
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

import corral.model.executor as executor_module  # noqa: E402
from benchmarks.structured_output_grammars import (  # noqa: E402
    measure_apply,
    measure_compile,
    measure_mask,
    measure_step_path,
    print_apply,
    print_compile,
    print_mask,
    print_step,
)
from benchmarks.structured_output_schemas import WORKLOADS  # noqa: E402
from corral import LLM, SamplingParams  # noqa: E402
from corral.model.resolve import resolve_model_dir  # noqa: E402
from corral.workloads.data import gsm8k_records  # noqa: E402

TARGET_OVERHEAD = 0.10  # the bound on the per-token overhead at batch 32


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        names = [
            line for line in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in line
        ]
        cpu = names[0].split(":", 1)[1].strip() if names else cpu
    except OSError:
        pass
    return dict(
        cpu=cpu,
        num_cores=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        load_average_1m=round(os.getloadavg()[0], 2),
        python=platform.python_version(),
        torch=torch.__version__,
        xgrammar=_version("xgrammar"),
        llguidance=_version("llguidance"),
    )


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


# ---- 1. overhead in the engine --------------------------------------------------------------


def run(llm: LLM, prompts: list[str], params: list[SamplingParams], concurrency: int):
    llm.engine.kv_manager.reset_prefix_cache()
    outputs = []
    start = time.perf_counter()
    for first in range(0, len(prompts), concurrency):
        end = first + concurrency
        outputs += llm.generate(prompts[first:end], params[first:end], use_tqdm=False)
    elapsed = time.perf_counter() - start
    return elapsed, [o.outputs[0] for o in outputs]


class StageClock:
    """Instruments the executor for one run: seconds in the model's forward and in sampling
    (mask work included), and the number of steps that ran the model. The timed runs are not
    instrumented."""

    def __init__(self, llm: LLM) -> None:
        self.model = llm.engine.executor.model
        self.seconds = {"forward": 0.0, "sample": 0.0}
        self.num_steps = 0

    def _timed(self, stage: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            result = call(*args, **kwargs)
            self.seconds[stage] += time.perf_counter() - start
            self.num_steps += stage == "forward"
            return result

        return timed

    def __enter__(self) -> StageClock:
        self._sample = executor_module.sample
        executor_module.sample = self._timed("sample", self._sample)
        self.model.forward = self._timed("forward", self.model.forward)
        return self

    def __exit__(self, *exc: object) -> None:
        executor_module.sample = self._sample
        del self.model.forward  # the instance attribute; the class's method shows again


def measure_overhead(
    llm: LLM, prompts: list[str], name: str, concurrency: int, repeats: int, max_tokens: int
) -> tuple[dict[str, Any], list[list[int]]]:
    n = len(prompts)
    constraint = WORKLOADS[name]
    constrained = SamplingParams(temperature=0, max_tokens=max_tokens, structured_output=constraint)
    _, calibration = run(llm, prompts, [constrained] * n, concurrency)  # also compiles
    lengths = [len(output.token_ids) for output in calibration]
    full = {
        "constrained": [constrained] * n,
        "unconstrained": [
            SamplingParams(temperature=0, max_tokens=k, ignore_eos=True) for k in lengths
        ],
    }
    first = {
        "constrained": [SamplingParams(temperature=0, max_tokens=1, structured_output=constraint)]
        * n,
        "unconstrained": [SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)] * n,
    }
    times: dict[str, list[float]] = {key: [] for key in full}
    first_times: dict[str, list[float]] = {key: [] for key in full}
    for repeat in range(repeats):
        order = list(full) if repeat % 2 == 0 else list(full)[::-1]
        for key in order:
            first_times[key].append(run(llm, prompts, first[key], concurrency)[0])
            elapsed, outputs = run(llm, prompts, full[key], concurrency)
            if [len(output.token_ids) for output in outputs] != lengths:
                raise SystemExit(f"{name} c={concurrency} {key}: output lengths changed")
            times[key].append(elapsed)
    stages = {}
    for key in full:
        with StageClock(llm) as clock:
            run(llm, prompts, full[key], concurrency)
        stages[key] = {
            f"{stage}_us_per_step": round(seconds / clock.num_steps * 1e6, 1)
            for stage, seconds in clock.seconds.items()
        }
    num_calls = -(-n // concurrency)
    num_tokens = sum(lengths)
    num_decode = num_tokens - n
    decode_s = {
        key: statistics.median(times[key]) - statistics.median(first_times[key]) for key in full
    }
    # Paired by repeat (the two ran back to back), so that drift in the machine's speed cancels.
    per_repeat = sorted(
        (times["constrained"][r] - first_times["constrained"][r])
        / (times["unconstrained"][r] - first_times["unconstrained"][r])
        - 1
        for r in range(repeats)
    )
    row = dict(
        workload=name,
        concurrency=concurrency,
        num_requests=n,
        output_tokens=num_tokens,
        num_finished_by_grammar=sum(output.finish_reason == "stop" for output in calibration),
        unconstrained_decode_tok_s=round(num_decode / decode_s["unconstrained"], 1),
        constrained_decode_tok_s=round(num_decode / decode_s["constrained"], 1),
        unconstrained_us_per_token=round(decode_s["unconstrained"] / num_decode * 1e6, 2),
        constrained_us_per_token=round(decode_s["constrained"] / num_decode * 1e6, 2),
        overhead=round(statistics.median(per_repeat), 4),
        overhead_min=round(min(per_repeat), 4),
        overhead_max=round(max(per_repeat), 4),
        end_to_end_overhead=round(
            statistics.median(times["constrained"]) / statistics.median(times["unconstrained"]) - 1,
            4,
        ),
        first_token_extra_ms_per_call=round(
            (
                statistics.median(first_times["constrained"])
                - statistics.median(first_times["unconstrained"])
            )
            / num_calls
            * 1e3,
            2,
        ),
        stages=stages,
        times_s=dict(full=times, first=first_times),
    )
    return row, [list(output.token_ids) for output in calibration]


# ---- main -----------------------------------------------------------------------------------


def chat(question: str) -> str:
    return f"<|begin|><|user|>{question}<|end|><|assistant|>"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model directory (default: corral-demo)")
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--max-tokens", type=int, default=256, help="cap on constrained outputs")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="4 prompts, 1 repeat (smoke test)")
    parser.add_argument(
        "--json-out", type=Path, default=Path("docs/figures/structured_output.json")
    )
    parser.add_argument(
        "--simulate",
        action="store_true",
        help="run nothing: set the simulator's predicted overhead beside the figures in "
        "--json-out (structured_output_sim.py)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.num_prompts, args.repeats, args.concurrency, args.max_tokens = 4, 1, "1,4", 48
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.simulate:
        from benchmarks.structured_output_sim import simulate_from_figures

        return {"simulated": simulate_from_figures(args.json_out)}
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    model_dir = resolve_model_dir(args.model)
    env = machine()
    print(
        f"CPU {env['cpu']}, {env['num_cores']} cores, {env['torch_threads']} torch threads, "
        f"load average {env['load_average_1m']}, torch {env['torch']}, xgrammar "
        f"{env['xgrammar']}, llguidance {env['llguidance'] or 'not installed'}; "
        f"model {model_dir.name}"
    )
    questions = [
        r["question"].strip() for r in gsm8k_records("test", max_num_records=args.num_prompts)
    ]
    prompts = [chat(q) for q in questions]
    llm = LLM(str(model_dir), max_num_seqs=max(concurrencies))
    run(llm, prompts[:2], [SamplingParams(temperature=0, max_tokens=8)] * 2, 2)  # warm-up

    print(
        "\n| workload | concurrency | output tokens | unconstrained decode tok/s | constrained "
        "decode tok/s | overhead per token (median) | per-repeat range | end to end | "
        "first token, extra ms per generate call |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    overhead, sequences = [], {}
    for name in WORKLOADS:
        for concurrency in concurrencies:
            row, outputs = measure_overhead(
                llm, prompts, name, concurrency, args.repeats, args.max_tokens
            )
            overhead.append(row)
            if concurrency == max(concurrencies):
                sequences[name] = outputs
            print(
                f"| {name} | {concurrency} | {row['output_tokens']} | "
                f"{row['unconstrained_decode_tok_s']} | {row['constrained_decode_tok_s']} | "
                f"{row['overhead']:+.1%} | {row['overhead_min']:+.1%} to "
                f"{row['overhead_max']:+.1%} | {row['end_to_end_overhead']:+.1%} | "
                f"{row['first_token_extra_ms_per_call']:+.2f} |",
                flush=True,
            )
    largest = [row for row in overhead if row["concurrency"] == max(concurrencies)]
    target_met = all(row["overhead"] <= TARGET_OVERHEAD for row in largest)
    print(
        f"target (at most {TARGET_OVERHEAD:.0%} per-token overhead at concurrency "
        f"{max(concurrencies)}): {'met' if target_met else 'NOT met'} ("
        + ", ".join(f"{row['workload']} {row['overhead']:+.1%}" for row in largest)
        + ")"
    )

    print_stages(overhead)
    compile_times = measure_compile(model_dir, args.repeats)
    print_compile(compile_times)
    mask = measure_mask(model_dir, sequences, args.repeats)
    print_mask(mask, env["llguidance"])
    step = [
        measure_step_path(model_dir, name, tokens, args.repeats)
        for name, tokens in sequences.items()
    ]
    print_step(step, {row["workload"]: row["unconstrained_us_per_token"] for row in largest})
    apply = measure_apply(llm.engine.vocab_size, tuple(concurrencies))
    print_apply(apply)
    result = dict(
        command="benchmarks/structured_output.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        machine=env,
        model=model_dir.name,
        target_overhead=TARGET_OVERHEAD,
        target_met=target_met,
        overhead=overhead,
        compile=compile_times,
        mask=mask,
        step_path=step,
        apply_bitmask=apply,
        load_average_1m_at_end=round(os.getloadavg()[0], 2),
    )
    if args.json_out is not None:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(result, indent=1) + "\n")
    return result


def print_stages(rows: list[dict[str, Any]]) -> None:
    print(
        "\nOne instrumented run per configuration: microseconds per model step\n"
        "| workload | concurrency | forward, unconstrained | forward, constrained | "
        "sample, unconstrained | sample, constrained (mask work included) |"
    )
    print("|---|---|---|---|---|---|")
    for row in rows:
        plain, masked = row["stages"]["unconstrained"], row["stages"]["constrained"]
        print(
            f"| {row['workload']} | {row['concurrency']} | {plain['forward_us_per_step']} | "
            f"{masked['forward_us_per_step']} | {plain['sample_us_per_step']} | "
            f"{masked['sample_us_per_step']} |"
        )


if __name__ == "__main__":
    main()
