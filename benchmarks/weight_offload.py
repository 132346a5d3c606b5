"""Weight offloading on the CPU (--offload-layers, offload to a memory-mapped file): decode
speed of the SmolLM-135M-shaped bf16 model with 0 .. all of its 30 decoder layers offloaded,
against no offloading in the same run, and the simulator's prediction beside each figure.

Two page-cache states:
- warm: the kernel's page cache holds the offload file (a machine with memory to spare for
  it): each step maps the offloaded layers' pages in again (MADV_POPULATE_READ on a helper
  thread, one layer ahead) and drops them after the layer runs;
- cold: each layer's pages are also evicted from the page cache after it runs, so every step
  reads the offloaded layers from the disk (a machine whose memory cannot hold the model).

Phases: single stream (one request, --tokens tokens, ms per output token, best of --rounds) and
a batch (--batch requests at once, output tokens per second, decode only: the same run with
max_tokens=1 is subtracted). Engines are all loaded up front and take turns in every round.

Page-in rates (bytes per second of offloaded weights mapped in, warm and cold) are measured on
the engine's own offload file. The simulator prices an offloading step as
max(step without offloading + bytes / CPU rate, bytes / rate) (corral/sim/cost/offload.py): on
a CPU the cores map the pages in, so the warm rate is also the CPU rate; the rate is the warm
one with the page cache holding the file, the cold one without. The prediction uses the
measured no-offload step and the measured rates.

    .venv/bin/python benchmarks/weight_offload.py --json docs/figures/weight_offload.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import machine  # noqa: E402
from corral import LLM, SamplingParams  # noqa: E402
from corral.bench.reference import smollm_shaped_model  # noqa: E402
from corral.model.weight_offload import layer_tensor_refs  # noqa: E402
from corral.model.weight_offload_mapped import MADV_DONTNEED  # noqa: E402
from corral.sim.cost.offload import offloaded_step_time_s  # noqa: E402


def _engine(num_layers: int, cold: bool, threads: int) -> LLM:
    llm = LLM(
        model=str(smollm_shaped_model()),
        dtype="bfloat16",
        max_model_len=512,
        num_threads=threads,
        offload_layers=num_layers,
        max_num_seqs=64,
    )
    offload = llm.engine.executor.model.offload
    if offload is not None:
        offload.drop_page_cache = cold
    return llm


def _prompts(rng: random.Random, count: int) -> list[dict]:
    # Fresh ids every time: no prefix-cache hits between rounds.
    return [{"prompt_token_ids": [rng.randrange(3, 2000) for _ in range(16)]} for _ in range(count)]


def _generate_s(llm: LLM, prompts: list[dict], max_tokens: int) -> float:
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0)
    start = time.perf_counter()
    llm.generate(prompts, params, use_tqdm=False)
    return time.perf_counter() - start


def page_in_rates(llm: LLM, repeats: int) -> dict[str, float]:
    """Bytes per second of mapping the offloaded layers' pages in, one layer after another as
    the engine does: from the page cache (warm) and from the disk (cold: every layer evicted
    from the page cache first). Best of repeats; the evictions are not timed."""
    offload = llm.engine.executor.model.offload
    file = offload.file
    total = sum(length for _, length in file.regions.values())
    rates = {}
    for state in ("warm", "cold"):
        best = float("inf")
        for _ in range(repeats + 1):  # the first pass warms the page cache up
            for index in offload.layer_ids:
                file.advise(index, MADV_DONTNEED)
                if state == "cold":
                    file.drop_page_cache(index)
            start = time.perf_counter()
            for index in offload.layer_ids:
                file.advise(index, offload.populate_advice)
            best = min(best, time.perf_counter() - start)
        rates[state] = total / best
    for index in offload.layer_ids:
        file.advise(index, MADV_DONTNEED)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", default="0,8,15,30", help="offloaded layers per engine")
    parser.add_argument("--cold", default="15,30", help="also run these counts cold")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    configs = [(int(n), False) for n in args.layers.split(",")]
    configs += [(int(n), True) for n in args.cold.split(",") if n]
    engines = {config: _engine(*config, args.threads) for config in configs}
    rng = random.Random(0)
    single: dict[tuple, float] = {}
    batch: dict[tuple, float] = {}
    for llm in engines.values():  # warm-up
        _generate_s(llm, _prompts(rng, 2), 4)
    for _ in range(args.rounds):
        for config, llm in engines.items():
            seconds = _generate_s(llm, _prompts(rng, 1), args.tokens) - _generate_s(
                llm, _prompts(rng, 1), 1
            )
            ms = seconds / (args.tokens - 1) * 1e3
            single[config] = min(single.get(config, float("inf")), ms)
            prompts = _prompts(rng, args.batch)
            full = _generate_s(llm, prompts, args.tokens)
            first = _generate_s(llm, _prompts(rng, args.batch), 1)
            rate = args.batch * (args.tokens - 1) / max(full - first, 1e-9)
            batch[config] = max(batch.get(config, 0.0), rate)
    largest = max(configs, key=lambda c: c[0])
    rates = page_in_rates(engines[(largest[0], False)], args.rounds)
    model = engines[configs[0]].engine.executor.model
    layer_bytes = sum(ref.nbytes for ref in layer_tensor_refs(model.layers[0])[0])
    base_single = single[(0, False)]
    base_step_batch = args.batch / batch[(0, False)] * 1e3  # ms per batch step
    rows = []
    print(f"machine: {machine()}")
    print(f"page-in rate: warm {rates['warm'] / 1e9:.2f} GB/s, cold {rates['cold'] / 1e9:.2f} GB/s")
    print(
        "| offloaded layers | page cache | offloaded MiB | single stream ms/token | vs none | "
        "predicted ms/token | batch tok/s | vs none | predicted tok/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for config in configs:
        num_layers, cold = config
        offloaded = num_layers * layer_bytes
        rate, cpu_rate = rates["cold" if cold else "warm"], rates["warm"]
        predicted_single = offloaded_step_time_s(base_single / 1e3, offloaded, rate, cpu_rate) * 1e3
        predicted_step = offloaded_step_time_s(base_step_batch / 1e3, offloaded, rate, cpu_rate)
        row = dict(
            offloaded_layers=num_layers,
            page_cache="cold" if cold else "warm",
            offloaded_mib=offloaded / 2**20,
            single_ms_per_token=single[config],
            single_vs_none=base_single / single[config],
            single_predicted_ms=predicted_single,
            batch_tokens_per_s=batch[config],
            batch_vs_none=batch[config] / batch[(0, False)],
            batch_predicted_tokens_per_s=args.batch / predicted_step,
        )
        rows.append(row)
        print(
            f"| {num_layers} | {row['page_cache']} | {row['offloaded_mib']:.0f} | "
            f"{row['single_ms_per_token']:.1f} | {row['single_vs_none']:.2f}x | "
            f"{predicted_single:.1f} | {row['batch_tokens_per_s']:.0f} | "
            f"{row['batch_vs_none']:.2f}x | {row['batch_predicted_tokens_per_s']:.0f} |"
        )
    for llm in engines.values():
        llm.shutdown()
    if args.json is not None:
        document = dict(
            machine=machine(),
            load_average=os.getloadavg(),
            threads=args.threads,
            tokens=args.tokens,
            batch=args.batch,
            layer_bytes=layer_bytes,
            page_in_bytes_per_s=rates,
            rows=rows,
        )
        args.json.write_text(json.dumps(document, indent=1) + "\n")


if __name__ == "__main__":
    main()
