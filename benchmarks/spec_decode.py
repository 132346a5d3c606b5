"""Speculative decoding on the bundled demo models: tokens/s of each proposer against
speculation off, in the same run, single-request and batched, with acceptance figures.

Workloads (greedy, EOS respected; alone, every configuration must produce exactly the tokens of
speculation off, which this script checks; in a batch, bf16 sums over a different number of
rows can break near-ties differently, as any batch composition can, so the share of identical
outputs is reported instead):
- gsm8k: held-out GSM8K test questions in the chat template, up to --max-tokens tokens;
- repeat: a regenerate turn, the question, the model's own earlier answer, and the same question
  again: the reply largely repeats text already in the prompt (an edit / retry workload).

Concurrency 1 sends the prompts one after another; concurrency C submits C at once
(max_num_seqs=C) and measures the batch until all finish. Fixed-K rows (K=4) are shown next to
the adaptive rule. Two rates: output tokens per second end to end (prefill included), and the
decode rate, (output tokens - first tokens) / (time - time of the same run with max_tokens=1),
which is the part speculation changes (the demo-model cards measure decode the same way).
Median of --repeats after --warmup-runs untimed runs; the configurations take turns within each
repeat, in an order that rotates. OpenMP waits passively unless OMP_WAIT_POLICY=default.

Paired ratios: each run of a configuration is also compared with the run of the first
configuration (off) nearest to it in the same repeat, and the median and range of those decode
ratios are reported. On a VM whose speed drifts by tens of percent between minutes, a ratio of
runs seconds apart is steadier than a ratio of medians. --interleave-off runs off again before
every other configuration, so that each pair is adjacent. --process-per-config runs each
configuration's engine in a process of its own (the driver still alternates between them), so
that no engine's memory and caches share a process with the others'.

    .venv/bin/python benchmarks/spec_decode.py                      # full table
    .venv/bin/python benchmarks/spec_decode.py --quick              # fewer prompts
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import time
from pathlib import Path

# OpenMP reads its wait policy when torch loads. PASSIVE (this script's default) keeps figures
# stable on cores shared with other jobs but makes every parallel region wake a sleeping thread;
# OMP_WAIT_POLICY=default measures libgomp's own default (spin a while, then sleep), which is
# what `corral serve` runs with (docs/performance.md, "Threads kept warm between steps").
# The marker carries the choice to the engine processes of --process-per-config (spawned, they
# run this module's top level again, with OMP_WAIT_POLICY already removed).
_OMP_DEFAULT_MARKER = "CORRAL_SPEC_DECODE_OMP_DEFAULT"
if (
    os.environ.get("OMP_WAIT_POLICY", "").lower() == "default"
    or os.environ.get(_OMP_DEFAULT_MARKER) == "1"
):
    os.environ.pop("OMP_WAIT_POLICY", None)
    os.environ[_OMP_DEFAULT_MARKER] = "1"
else:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from corral import LLM, SamplingParams  # noqa: E402
from corral.model.cpu_features import has_native_bf16_matmul  # noqa: E402
from corral.workloads.data import gsm8k_records  # noqa: E402

CONFIGS: dict[str, dict] = {
    "off": {},
    "ngram": dict(speculative_method="ngram"),
    "suffix": dict(speculative_method="suffix"),
    "draft": dict(speculative_method="draft", speculative_model="corral-demo-draft"),
    "ngram K=4 fixed": dict(speculative_method="ngram", speculative_tokens_rule="fixed"),
    "suffix K=4 fixed": dict(speculative_method="suffix", speculative_tokens_rule="fixed"),
    "draft K=4 fixed": dict(
        speculative_method="draft",
        speculative_model="corral-demo-draft",
        speculative_tokens_rule="fixed",
    ),
}


def chat(question: str, answer: str | None = None, again: bool = False) -> str:
    text = f"<|begin|><|user|>{question}<|end|><|assistant|>"
    if answer is not None:
        text += f"{answer}<|end|><|user|>{question}<|end|><|assistant|>" if again else answer
    return text


def workloads(num_prompts: int, max_tokens: int) -> dict[str, tuple[list[str], int]]:
    questions = [r["question"].strip() for r in gsm8k_records("test", max_num_records=num_prompts)]
    first = LLM().generate(
        [chat(q) for q in questions],
        SamplingParams(temperature=0, max_tokens=96),
        use_tqdm=False,
    )
    repeat = [chat(q, o.outputs[0].text, again=True) for q, o in zip(questions, first)]
    return {"gsm8k": ([chat(q) for q in questions], max_tokens), "repeat": (repeat, 96)}


def run_once(
    llm: LLM,
    prompts: list[str],
    max_tokens: int,
    concurrency: int,
    keep_suffix_history: bool = False,
):
    # Every run starts from an empty prefix cache: blocks cached by another configuration's
    # batches hold KV computed in another order, whose bf16 bits may differ.
    llm.engine.kv_manager.reset_prefix_cache()
    # And, unless --keep-suffix-history, with an empty suffix tree of finished outputs: the
    # same prompts' outputs from earlier runs (identical, greedy) would otherwise be proposed.
    proposer = llm.engine.executor.proposer
    if not keep_suffix_history and hasattr(proposer, "clear_history"):
        proposer.clear_history()
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=max_tokens == 1)
    outputs = []
    start = time.perf_counter()
    for first in range(0, len(prompts), concurrency):
        outputs += llm.generate(prompts[first : first + concurrency], params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    return elapsed, [o.outputs[0].token_ids for o in outputs]


def spec_counts(llm: LLM) -> tuple[int, int, int]:
    stats = llm.engine.scheduler.stats().spec_decode
    if stats is None:
        return 0, 0, 0
    return stats.num_drafts, stats.num_draft_tokens, stats.num_accepted_tokens


def paired_text(median: float | None, ratios: list[float]) -> str:
    if median is None:
        return "-"
    return f"{median:.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f})"


class LocalEngine:
    """A configuration's engine in this process."""

    def __init__(self, max_num_seqs: int, config: dict) -> None:
        self.llm = LLM(max_num_seqs=max_num_seqs, **config)

    def run(self, prompts: list[str], max_tokens: int, concurrency: int, keep: bool):
        return run_once(self.llm, prompts, max_tokens, concurrency, keep)

    def counts(self) -> tuple[int, int, int]:
        return spec_counts(self.llm)

    def close(self) -> None:
        pass


def _serve_engine(connection, max_num_seqs: int, config: dict) -> None:
    engine = LocalEngine(max_num_seqs, config)
    connection.send("ready")
    while (request := connection.recv()) is not None:
        method, args = request
        connection.send(getattr(engine, method)(*args))


class ProcessEngine:
    """A configuration's engine in a process of its own (spawned: a fresh interpreter, torch
    and OpenMP pool), called over a pipe with LocalEngine's methods."""

    def __init__(self, max_num_seqs: int, config: dict) -> None:
        context = multiprocessing.get_context("spawn")
        self.connection, child = context.Pipe()
        self.process = context.Process(
            target=_serve_engine, args=(child, max_num_seqs, config), daemon=True
        )
        self.process.start()
        if self.connection.recv() != "ready":
            raise RuntimeError("the engine process did not start")

    def _call(self, method: str, *args):
        self.connection.send((method, args))
        return self.connection.recv()

    def run(self, prompts: list[str], max_tokens: int, concurrency: int, keep: bool):
        return self._call("run", prompts, max_tokens, concurrency, keep)

    def counts(self) -> tuple[int, int, int]:
        return self._call("counts")

    def close(self) -> None:
        self.connection.send(None)
        self.process.join(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--warmup-runs", type=int, default=1, help="untimed runs per configuration and cell"
    )
    parser.add_argument("--quick", action="store_true", help="8 prompts, 1 repeat")
    parser.add_argument(
        "--keep-suffix-history",
        action="store_true",
        help="let the suffix proposer keep earlier runs' outputs (of these same prompts)",
    )
    parser.add_argument(
        "--interleave-off",
        action="store_true",
        help="run the first configuration (off) before every other one in each repeat",
    )
    parser.add_argument(
        "--process-per-config",
        action="store_true",
        help="run each configuration's engine in a process of its own",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    keep = args.keep_suffix_history
    if args.quick:
        args.num_prompts, args.repeats = 8, 1
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    names = args.configs.split(",")
    print(
        f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"native bf16 matmul: {has_native_bf16_matmul()}, torch {torch.__version__}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset (libgomp default)')}"
    )
    loads = workloads(args.num_prompts, args.max_tokens)
    print(
        "| workload | concurrency | configuration | output tok/s | vs off | decode tok/s | "
        "vs off | paired vs off (median; min-max) | paired decode vs off | acceptance | "
        "mean accepted length | "
        "drafts per output token | outputs identical to off |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    engine_class = ProcessEngine if args.process_per_config else LocalEngine
    engines = {name: engine_class(max(concurrencies), CONFIGS[name]) for name in names}
    for engine in engines.values():
        engine.run(list(loads["gsm8k"][0][:2]), 8, 2, False)  # warm-up
    for workload, (prompts, max_tokens) in loads.items():
        for concurrency in concurrencies:
            # Configurations take turns within each repeat, so that drift in the machine's speed
            # (shared cores) falls on all of them alike.
            times: dict[str, list[float]] = {name: [] for name in names}
            first_times: dict[str, list[float]] = {name: [] for name in names}
            # Per run of each configuration: its (elapsed, first-token time) and those of the
            # reference's run nearest to it in the same repeat (paired ratios).
            paired: dict[str, list[tuple[float, float, float, float]]] = {n: [] for n in names}
            outputs: dict[str, list[list[int]]] = {}
            before = {name: engines[name].counts() for name in names}
            # Untimed full runs first: a process's first runs of a batch are slower (allocator
            # and cache warm-up; c32 rates rose 20-35% over the first three runs), which
            # would favour whichever configuration runs later.
            for _ in range(args.warmup_runs):
                for name in names:
                    engines[name].run(prompts, max_tokens, concurrency, keep)
            for repeat in range(args.repeats):
                # The order rotates each repeat, so that no configuration always runs first.
                order = names[repeat % len(names) :] + names[: repeat % len(names)]
                if args.interleave_off:
                    others = [name for name in order if name != names[0]]
                    order = [step for name in others for step in (names[0], name)] or names[:1]
                runs = []
                for name in order:
                    engine = engines[name]
                    first = engine.run(prompts, 1, concurrency, keep)[0]
                    elapsed, outputs[name] = engine.run(prompts, max_tokens, concurrency, keep)
                    first_times[name].append(first)
                    times[name].append(elapsed)
                    runs.append((name, elapsed, first))
                references = [i for i, run in enumerate(runs) if run[0] == names[0]]
                for i, (name, elapsed, first) in enumerate(runs):
                    if name == names[0] or not references:
                        continue
                    # The nearest reference run, the one before it on a tie.
                    nearest = min(references, key=lambda j: (abs(j - i), j > i))
                    paired[name].append((elapsed, first, *runs[nearest][1:]))
            reference = outputs[names[0]]
            base_rate = base_decode = None
            for name in names:
                tokens = outputs[name]
                if concurrency == 1 and tokens != reference:
                    raise SystemExit(f"{name}: outputs differ from {names[0]}")
                identical = sum(a == b for a, b in zip(tokens, reference)) / len(tokens)
                after = engines[name].counts()
                drafts, draft_tokens, accepted = (a - b for a, b in zip(after, before[name]))
                num_tokens = sum(len(t) for t in tokens)
                elapsed = statistics.median(times[name])
                rate = num_tokens / elapsed
                decode_rate = (num_tokens - len(prompts)) / (
                    elapsed - statistics.median(first_times[name])
                )
                base_rate = base_rate or rate
                base_decode = base_decode or decode_rate
                # Decode-rate ratio to the paired reference run (same tokens count assumed for
                # the reference: its outputs are the reference list).
                reference_tokens = sum(len(t) for t in reference)
                paired_decode = sorted(
                    ((num_tokens - len(prompts)) / (t - f))
                    / ((reference_tokens - len(prompts)) / (ref_t - ref_f))
                    for t, f, ref_t, ref_f in paired[name]
                )
                paired_median = (
                    round(statistics.median(paired_decode), 3) if paired_decode else None
                )
                # End to end: output tokens per second against the paired reference run.
                paired_rate = sorted(
                    (num_tokens / t) / (reference_tokens / ref_t) for t, _, ref_t, _ in paired[name]
                )
                paired_rate_median = (
                    round(statistics.median(paired_rate), 3) if paired_rate else None
                )
                row = dict(
                    workload=workload,
                    omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", "default"),
                    process_per_config=args.process_per_config,
                    concurrency=concurrency,
                    config=name,
                    output_tokens_per_s=round(rate, 1),
                    output_tokens_per_s_runs=[round(num_tokens / t, 1) for t in times[name]],
                    speedup=round(rate / base_rate, 3),
                    decode_tokens_per_s=round(decode_rate, 1),
                    decode_speedup=round(decode_rate / base_decode, 3),
                    paired_speedup=paired_rate_median,
                    paired_speedup_runs=[round(r, 3) for r in paired_rate],
                    paired_decode_speedup=paired_median,
                    paired_decode_speedup_runs=[round(r, 3) for r in paired_decode],
                    acceptance_rate=round(accepted / draft_tokens, 3) if draft_tokens else None,
                    mean_accepted_length=round(1 + accepted / drafts, 3) if drafts else None,
                    identical_outputs=round(identical, 3),
                    draft_tokens_per_output_token=round(
                        draft_tokens / num_tokens / args.repeats, 3
                    ),
                )
                rows.append(row)
                print(
                    f"| {workload} | {concurrency} | {name} | {row['output_tokens_per_s']} | "
                    f"{row['speedup']:.2f}x | {row['decode_tokens_per_s']} | "
                    f"{row['decode_speedup']:.2f}x | "
                    f"{paired_text(paired_rate_median, paired_rate)} | "
                    f"{paired_text(paired_median, paired_decode)} | "
                    f"{row['acceptance_rate']} | "
                    f"{row['mean_accepted_length']} | {row['draft_tokens_per_output_token']} | "
                    f"{row['identical_outputs']:.0%} |",
                    flush=True,
                )
    for engine in engines.values():
        engine.close()
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
