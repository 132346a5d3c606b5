"""Multi-LoRA serving throughput: one base model, rank-16 adapters on every linear layer, mixed
in every batch, against the base model alone and against weights with one adapter merged.

Model: a random SmolLM-135M-shaped model (bf16). Workload: 32 requests submitted at once
(max_num_seqs 32: concurrency 32), each 128 random prompt tokens and exactly 128 output tokens
(greedy, EOS ignored); fresh prompts for every run and the prefix cache reset before it, so no
prefix-cache hits (the LoRA configurations share one engine). Configurations:
  base         the base model, LoRA off
  base+lora    LoRA on (16 slots), every request on the base model (the cost of the switch)
  N adapters   request i uses adapter i mod N (N = 1, 4, 16; all resident, 16 slots)
  merged       one adapter merged into the weights, LoRA off (what merging buys for 1 adapter)
Every engine is built and warmed up first (its adapters loaded); then each round runs every
configuration once, in rotating order; throughput = output tokens / wall time; ratios to base
are taken within a round, then the median over rounds. Adapter loads are timed alone: cold
(read from disk into the host cache, then copied into a slot; the file is in the OS page cache
after the first read, so this is the parse-and-copy cost, not a disk's) and warm (from the
host cache into a slot).

    .venv/bin/python benchmarks/lora_serving.py                 # about 15 minutes on 2 cores
    .venv/bin/python benchmarks/lora_serving.py --quick         # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks.common import machine  # noqa: E402
from benchmarks.lora_adapters import write_merged_model, write_random_adapter  # noqa: E402
from corral import LLM, SamplingParams  # noqa: E402
from corral.lora.adapter import LoRARequest, inspect_adapter  # noqa: E402
from corral.lora.memory import AdapterMemory  # noqa: E402
from corral.lora.weights import load_adapter_weights  # noqa: E402
from corral.model.arch import ModelArch  # noqa: E402

TARGET_RATIO = 0.7  # 16 adapters: at least this fraction of base-only throughput


def _prompts(num: int, length: int, vocab_size: int, seed: int) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, vocab_size, (num, length), generator=generator)
    return [{"prompt_token_ids": row.tolist()} for row in ids]


def _run(llm: LLM, prompts: list[dict], params: SamplingParams, loras: list | None) -> float:
    llm.engine.kv_manager.reset_prefix_cache()
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False, lora_request=loras)
    elapsed = time.perf_counter() - start
    num_tokens = sum(len(output.outputs[0].token_ids) for output in outputs)
    return num_tokens / elapsed


def load_latencies(model_dir: Path, adapter_dirs: list[Path], rank: int) -> dict[str, float]:
    """Median ms of a cold (disk) and a warm (host cache) load of one adapter into a slot."""
    arch = ModelArch.from_dir(model_dir)
    memory = AdapterMemory(arch, 1, rank, torch.bfloat16, torch.device("cpu"))
    cold, warm = [], []
    for index, directory in enumerate(adapter_dirs):
        ref = inspect_adapter(f"a{index}", directory, arch, rank)
        start = time.perf_counter()
        weights = load_adapter_weights(ref, torch.bfloat16)
        memory.slots.write(0, weights)
        cold.append(time.perf_counter() - start)
        start = time.perf_counter()
        memory.slots.write(0, weights)
        warm.append(time.perf_counter() - start)
    return dict(
        cold_ms=1e3 * statistics.median(cold),
        warm_ms=1e3 * statistics.median(warm),
        adapter_mib=weights.num_bytes / 2**20,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model directory (default: SmolLM-shaped)")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--num-requests", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--output-tokens", type=int, default=128)
    parser.add_argument("--adapter-counts", default="1,4,16")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.num_requests, args.prompt_tokens, args.output_tokens, args.rounds = 4, 8, 4, 1
        args.adapter_counts = "1,2"
    if args.model is None:
        from corral.bench.reference import smollm_shaped_model

        model_dir = smollm_shaped_model()
    else:
        model_dir = Path(args.model)
    counts = [int(n) for n in args.adapter_counts.split(",")]
    max_count = max(counts)
    arch = ModelArch.from_dir(model_dir)
    work = Path(tempfile.mkdtemp(prefix="corral-lora-bench-"))
    adapter_dirs = [
        write_random_adapter(model_dir, work / f"adapter-{i}", args.rank, seed=i)
        for i in range(max_count)
    ]
    merged_dir = write_merged_model(model_dir, adapter_dirs[0], work / "merged")
    common = dict(
        dtype="bfloat16",
        max_num_seqs=args.num_requests,
        max_num_batched_tokens=max(1024, args.prompt_tokens * 4),
        max_model_len=args.prompt_tokens + args.output_tokens + 8,
        seed=0,
    )
    lora = dict(enable_lora=True, max_loras=max_count, max_lora_rank=args.rank)
    requests = [LoRARequest(f"a{i}", str(directory)) for i, directory in enumerate(adapter_dirs)]
    configs: dict[str, tuple[LLM, Any]] = {
        "base": (LLM(model=str(model_dir), **common), None),
        "base+lora": (LLM(model=str(model_dir), **common, **lora), None),
        "merged": (LLM(model=str(merged_dir), **common), None),
    }
    lora_llm = configs["base+lora"][0]
    for count in counts:
        loras = [requests[i % count] for i in range(args.num_requests)]
        configs[f"{count} adapters"] = (lora_llm, loras)
    params = SamplingParams(temperature=0, max_tokens=args.output_tokens, ignore_eos=True)
    warm_prompts = _prompts(args.num_requests, args.prompt_tokens, arch.vocab_size, seed=999)
    for llm, loras in configs.values():  # warm-up: kernels, allocator, adapter loads
        warm_params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
        if loras is not None:
            warm_loras = [requests[i % max_count] for i in range(args.num_requests)]
            _run(llm, warm_prompts, warm_params, warm_loras)
        _run(llm, warm_prompts, warm_params, None)
    names = list(configs)
    throughput: dict[str, list[float]] = {name: [] for name in names}
    ratios: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(args.rounds):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        this_round = {}
        for name in order:
            llm, loras = configs[name]
            # Fresh prompts for every run: engines that share a prefix cache never hit it.
            seed = round_index * len(names) + names.index(name)
            prompts = _prompts(args.num_requests, args.prompt_tokens, arch.vocab_size, seed)
            this_round[name] = _run(llm, prompts, params, loras)
            throughput[name].append(this_round[name])
        for name in names:
            ratios[name].append(this_round[name] / this_round["base"])
        print(
            f"round {round_index + 1}: " + ", ".join(f"{n} {v:.0f}" for n, v in this_round.items())
        )
    rows = [
        dict(
            config=name,
            output_tok_s=statistics.median(throughput[name]),
            ratio_to_base=statistics.median(ratios[name]),
            ratio_min=min(ratios[name]),
            ratio_max=max(ratios[name]),
        )
        for name in names
    ]
    loads = load_latencies(model_dir, adapter_dirs, args.rank)
    result = dict(
        machine=machine(torch_threads=torch.get_num_threads(), torch=torch.__version__),
        settings=dict(vars(args), model=str(model_dir), json_out=None),
        rows=rows,
        adapter_load=loads,
    )
    print(f"\n{'configuration':<14} {'output tok/s':>12} {'x base':>7}  (min-max over rounds)")
    for row in rows:
        print(
            f"{row['config']:<14} {row['output_tok_s']:>12.0f} {row['ratio_to_base']:>7.2f}  "
            f"({row['ratio_min']:.2f}-{row['ratio_max']:.2f})"
        )
    print(
        f"adapter load ({loads['adapter_mib']:.1f} MiB): cold {loads['cold_ms']:.1f} ms, "
        f"warm {loads['warm_ms']:.1f} ms"
    )
    largest = f"{max_count} adapters"
    ratio = next(row["ratio_to_base"] for row in rows if row["config"] == largest)
    verdict = "met" if ratio >= TARGET_RATIO else "MISSED"
    print(f"target (at least {TARGET_RATIO}x base with {largest}): {ratio:.2f}x, {verdict}")
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
