"""Weight-only int8 (--quantization int8) against bf16: kernel speed, decode speed, and what the
quantization costs in greedy agreement and perplexity on GSM8K (docs/quantization.md).

(a) the linear kernels at rows 1, 8, 32 on the demo model's shapes and SmolLM-135M's: int8_linear
on packed panels (int16 x, integer products) and on the plain layout (dequantizing) against
corral's bf16 few-row kernel and torch's F.linear (bf16); (b) single-stream decode tok/s and
batch-32 throughput of one LLM per variant (bf16, int8 on panels, int8 plain), same process,
rounds alternating; (c) greedy agreement of each int8 variant with bf16 over GSM8K test
questions x 64 tokens (and of bf16 with float32, for scale), and perplexity of the answers given
the questions.

    .venv/bin/python benchmarks/int8_weights.py --json docs/figures/int8_weights.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from corral import LLM, SamplingParams
from corral.bench.offline.ceiling import single_request_decode
from corral.demo.corpus import encode_examples, load_gsm8k, to_messages
from corral.model.kernels import cpu_kernels
from corral.model.quantization import pack_int8_weights, quantize_int8, quantize_model

# (name, out, in) of each linear: corral-demo (hidden 256) and SmolLM-135M (hidden 576).
SHAPES = {
    "corral-demo": [("qkv", 512, 256), ("o", 256, 256), ("gate_up", 1536, 256),
                    ("down", 256, 768), ("lm_head", 4096, 256)],
    "smollm-135m": [("qkv", 960, 576), ("o", 576, 576), ("gate_up", 3072, 576),
                    ("down", 576, 1536), ("lm_head", 49152, 576)],
}  # fmt: skip


def machine() -> dict:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    wanted = ("avx2", "fma", "f16c", "avx512", "amx", "vnni")
    return {
        "cpu": fields.get("Model name", platform.processor()).strip(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "simd_flags": sorted(f for f in flags if f.startswith(wanted)),
        "load_average_start": os.getloadavg(),
    }


def best_us(fn, *args, budget_s: float = 0.3) -> float:
    """Fastest microseconds of fn(*args) over budget_s (at least 5 calls, after one warm-up):
    on shared cores the fastest call is the one not preempted."""
    fn(*args)
    times, deadline = [], time.perf_counter() + budget_s
    while time.perf_counter() < deadline or len(times) < 5:
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return min(times) * 1e6


def kernel_speed(kernels) -> list[dict]:
    """One thread (a second one, on shared cores, mostly measures the other tenants)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows_out = []
    generator = torch.Generator().manual_seed(0)
    for model, shapes in SHAPES.items():
        for name, out_features, in_features in shapes:
            weight = (torch.randn(out_features, in_features, generator=generator) * 0.05).bfloat16()
            q = quantize_int8(weight)
            packed = q.packed()  # every shape here has out % 64 == 0
            for rows in (1, 8, 32):
                x = torch.randn(rows, in_features, generator=generator).bfloat16()
                panel = best_us(kernels.int8_linear, x, packed.qweight, packed.scales, None)
                int8 = best_us(kernels.int8_linear, x, q.qweight, q.scales, None)
                bf16 = best_us(kernels.few_row_linear, x, weight, None)
                torch_us = best_us(F.linear, x, weight)
                row = dict(model=model, linear=name, out=out_features, rows=rows,
                           int8_panel_us=panel, int8_us=int8, bf16_kernel_us=bf16,
                           torch_bf16_us=torch_us, int8_weight_gb_s=q.nbytes / int8 / 1e3,
                           bf16_weight_gb_s=weight.nbytes / bf16 / 1e3)  # fmt: skip
                rows_out.append(row)
                print(f"  {model:12s} {name:8s} {in_features:5d}->{out_features:<6d} rows {rows:2d}"
                      f"  int8 panels {panel:8.1f} us  int8 plain {int8:8.1f} us  bf16 kernel "
                      f"{bf16:8.1f} us  F.linear {torch_us:8.1f} us")  # fmt: skip
    torch.set_num_threads(threads)
    return rows_out


def plain_int8_llm(**kwargs) -> LLM:
    """An int8 LLM on the plain layout and the dequantizing kernel (CORRAL_PACK_INT8=0)."""
    os.environ["CORRAL_PACK_INT8"] = "0"
    try:
        return LLM(quantization="int8", **kwargs)
    finally:
        del os.environ["CORRAL_PACK_INT8"]


def make_llms(model: str | None) -> dict[str, LLM]:
    common = dict(model=model, num_blocks=1024, block_size=16, max_num_seqs=64)
    llms = {
        "bf16": LLM(dtype="bfloat16", **common),
        "int8": LLM(dtype="bfloat16", quantization="int8", **common),
        "int8_plain": plain_int8_llm(dtype="bfloat16", **common),
        "int8_all": LLM(dtype="bfloat16", **common),
        "int8_g128": LLM(dtype="bfloat16", **common),
        "fp32": LLM(dtype="float32", **common),
        "int8_fp32": LLM(dtype="float32", quantization="int8", **common),
        "int8_fp32_plain": plain_int8_llm(dtype="float32", **common),
    }
    quantize_model(llms["int8_all"].engine.executor.model, lm_head=True)
    pack_int8_weights(llms["int8_all"].engine.executor.model)  # layers and head on panels
    quantize_model(llms["int8_g128"].engine.executor.model, group_size=128)  # grouped: plain
    return llms


def batch_throughput(llm: LLM, prompts: list[list[int]], max_tokens: int) -> float:
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, detokenize=False)
    start = time.perf_counter()
    llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    return len(prompts) * max_tokens / (time.perf_counter() - start)


def decode_speed(llms: dict[str, LLM], prompts, rounds: int, decode_tokens: int) -> dict:
    speeds: dict[str, dict[str, list[float]]] = {
        name: {"single": [], "batch32": []} for name in ("bf16", "int8", "int8_plain")
    }
    for _ in range(rounds):  # alternating, so drifting load hits both alike
        for name in speeds:
            speeds[name]["single"].append(single_request_decode(llms[name], decode_tokens))
            speeds[name]["batch32"].append(batch_throughput(llms[name], prompts[:32], 64))
    result = {
        name: {kind: statistics.median(values) for kind, values in kinds.items()}
        for name, kinds in speeds.items()
    }
    for over in ("bf16", "int8_plain"):
        result[f"int8_over_{over}"] = {
            kind: result["int8"][kind] / result[over][kind] for kind in ("single", "batch32")
        }
    return result


def greedy_tokens(llm: LLM, prompts, max_tokens: int) -> list[list[int]]:
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, detokenize=False)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    return [output.outputs[0].token_ids for output in outputs]


def agreement(ours: list[list[int]], theirs: list[list[int]]) -> dict:
    same = sum(a == b for x, y in zip(ours, theirs, strict=True) for a, b in zip(x, y, strict=True))
    total = sum(map(len, ours))
    first = []
    for x, y in zip(ours, theirs, strict=True):
        first.append(next((i for i, (a, b) in enumerate(zip(x, y, strict=True)) if a != b), len(x)))
    return {
        "identical_token_fraction": same / total,
        "identical_sequences": sum(f == len(x) for f, x in zip(first, ours, strict=True)),
        "num_sequences": len(ours),
        "mean_first_divergence": statistics.mean(first),
        "median_first_divergence": statistics.median(first),
    }


def perplexity(llm: LLM, encoded) -> dict:
    params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)
    outputs = llm.generate([{"prompt_token_ids": e.token_ids} for e in encoded], params,
                           use_tqdm=False)  # fmt: skip
    answer_nll = all_nll = 0.0
    num_answer = num_all = 0
    for example, output in zip(encoded, outputs, strict=True):
        for position in range(1, len(example.token_ids)):
            token = example.token_ids[position]
            nll = -output.prompt_logprobs[position][token].logprob
            all_nll, num_all = all_nll + nll, num_all + 1
            if position >= example.answer_start:
                answer_nll, num_answer = answer_nll + nll, num_answer + 1
    return {"answer": math.exp(answer_nll / num_answer), "all_tokens": math.exp(all_nll / num_all),
            "num_answer_tokens": num_answer}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: the bundled corral-demo")
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--num-ppl-examples", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--skip-kernels", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result: dict = {"machine": machine(), "model": args.model or "corral-demo", "args": vars(args)}

    def save() -> None:  # after each section, so a run cut short keeps what it measured
        if args.json:
            result["machine"]["load_average_end"] = os.getloadavg()
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")

    print(json.dumps(result["machine"]))
    kernels = cpu_kernels()
    if kernels is not None and not args.skip_kernels:
        print("(a) kernel speed, fastest microseconds per call, one thread")
        result["kernels"] = kernel_speed(kernels)
        save()
    llms = make_llms(args.model)
    tokenizer = llms["bf16"].get_tokenizer()
    examples = load_gsm8k("test", max_num_examples=max(args.num_prompts, args.num_ppl_examples))
    prompts = [
        tokenizer.encode_chat(to_messages(example, with_answer=False))
        for example in examples[: args.num_prompts]
    ]
    print("(b) decode speed")
    result["decode"] = decode_speed(llms, prompts, args.rounds, args.decode_tokens)
    print(json.dumps(result["decode"], indent=1))
    save()
    print("(c) greedy agreement and perplexity")
    tokens = {name: greedy_tokens(llm, prompts, 64) for name, llm in llms.items()}
    result["agreement_with_bf16"] = {
        name: agreement(tokens[name], tokens["bf16"]) for name in tokens if name != "bf16"
    }
    result["int8_fp32_agreement_with_fp32"] = agreement(tokens["int8_fp32"], tokens["fp32"])
    result["int8_fp32_plain_agreement_with_fp32"] = agreement(
        tokens["int8_fp32_plain"], tokens["fp32"]
    )
    result["int8_agreement_with_int8_plain"] = agreement(tokens["int8"], tokens["int8_plain"])
    save()
    encoded = encode_examples(tokenizer.hf, examples[: args.num_ppl_examples])
    result["perplexity"] = {name: perplexity(llm, encoded) for name, llm in llms.items()}
    save()
    keys = ("agreement_with_bf16", "int8_fp32_agreement_with_fp32",
            "int8_fp32_plain_agreement_with_fp32", "int8_agreement_with_int8_plain",
            "perplexity")  # fmt: skip
    print(json.dumps({key: result[key] for key in keys}, indent=1))


if __name__ == "__main__":
    main()
