"""Offline throughput of corral against transformers `generate` with static batches, and
single-request decode speed against the machine's memory-bandwidth ceiling.

Workload: the first N requests of the Azure LLM conversation trace (2023), lengths multiplied by
--length-scale so that a 2-core CPU finishes in minutes, on a random model shaped like
SmolLM-135M. Both engines get the same prompt token ids and must produce exactly the requested
number of output tokens (EOS ignored); neither detokenizes.

    .venv/bin/python benchmarks/offline_throughput.py --dtypes bfloat16,float32
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks.common import azure_conv_lengths, random_prompts, smollm_shaped_model


def run_corral(model_dir: Path, dtype: str, prompts, lengths, args) -> dict:
    from corral import LLM, SamplingParams

    llm = LLM(
        model=str(model_dir),
        dtype=dtype,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        kv_cache_memory="4GiB",
        max_model_len=args.max_model_len,
    )
    params = [
        SamplingParams(temperature=0, max_tokens=out, ignore_eos=True, detokenize=False)
        for _, out in lengths
    ]
    llm.generate(
        {"prompt_token_ids": prompts[0][:16]}, params[0].clone(max_tokens=4), use_tqdm=False
    )
    start = time.perf_counter()
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    num_output = sum(len(o.outputs[0].token_ids) for o in outputs)
    assert num_output == sum(out for _, out in lengths)
    return {
        "elapsed_s": elapsed,
        "output_tokens": num_output,
        "output_tokens_per_s": num_output / elapsed,
        "llm": llm,
    }


def run_transformers(model_dir: Path, dtype: str, prompts, lengths, batch_size: int) -> dict:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    model.eval()
    pad = 0
    start = time.perf_counter()
    num_output = 0
    with torch.inference_mode():
        for begin in range(0, len(prompts), batch_size):
            batch = prompts[begin : begin + batch_size]
            outs = [out for _, out in lengths[begin : begin + batch_size]]
            width = max(map(len, batch))
            input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
            model.generate(
                input_ids,
                attention_mask=mask,
                max_new_tokens=max(outs),
                min_new_tokens=max(outs),
                do_sample=False,
                pad_token_id=pad,
                eos_token_id=None,
            )
            num_output += sum(outs)  # only the tokens each request asked for count
    elapsed = time.perf_counter() - start
    return {
        "elapsed_s": elapsed,
        "output_tokens": num_output,
        "output_tokens_per_s": num_output / elapsed,
    }


def read_bandwidth_gb_s(num_bytes: int, repeats: int = 7) -> float:
    """Best read bandwidth over a buffer the size of the weights (a float32 sum)."""
    buffer = torch.ones(num_bytes // 4, dtype=torch.float32)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        buffer.sum()
        best = min(best, time.perf_counter() - start)
    return num_bytes / best / 1e9


def single_request_decode(llm, num_tokens: int) -> float:
    """Decode tokens/s of one request (time from its first to its last token)."""
    from corral import SamplingParams
    from corral.sampling_params import OutputKind

    engine = llm.engine
    params = SamplingParams(
        temperature=0,
        max_tokens=num_tokens,
        ignore_eos=True,
        detokenize=False,
        output_kind=OutputKind.DELTA,
    )
    engine.add_request("single", {"prompt_token_ids": list(range(100, 132))}, params)
    times = []
    while engine.has_unfinished_requests():
        for output in engine.step():
            times += [time.perf_counter()] * len(output.outputs[0].token_ids)
    return (len(times) - 1) / (times[-1] - times[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-requests", type=int, default=64)
    parser.add_argument("--length-scale", type=float, default=0.25)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--max-num-batched-tokens", type=int, default=1024)
    parser.add_argument("--hf-batch-size", type=int, default=16)
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = smollm_shaped_model()
    lengths = azure_conv_lengths(args.num_requests, args.length_scale, args.max_model_len)
    from corral.model.arch import ModelArch

    arch = ModelArch.from_dir(model_dir)
    prompts = random_prompts(lengths, arch.vocab_size)
    print(
        f"workload: {len(lengths)} requests, prompt mean "
        f"{sum(p for p, _ in lengths) / len(lengths):.0f}, output mean "
        f"{sum(o for _, o in lengths) / len(lengths):.0f} tokens "
        f"(Azure conv x{args.length_scale}); threads {torch.get_num_threads()}"
    )
    results = {}
    for dtype in args.dtypes.split(","):
        corral_result = run_corral(model_dir, dtype, prompts, lengths, args)
        llm = corral_result.pop("llm")
        row = {"corral": corral_result}
        weight_bytes = arch.num_params() * torch.empty((), dtype=getattr(torch, dtype)).itemsize
        bandwidth = read_bandwidth_gb_s(weight_bytes)
        decode = single_request_decode(llm, args.decode_tokens)
        ceiling = bandwidth * 1e9 / weight_bytes
        row["single_request"] = {
            "decode_tokens_per_s": decode,
            "read_bandwidth_gb_s": bandwidth,
            "weight_bytes": weight_bytes,
            "ceiling_tokens_per_s": ceiling,
            "fraction_of_ceiling": decode / ceiling,
        }
        del llm
        line = (
            f"{dtype}: corral {corral_result['output_tokens_per_s']:.1f} out tok/s "
            f"({corral_result['elapsed_s']:.1f} s)"
        )
        if not args.skip_transformers:
            hf = run_transformers(model_dir, dtype, prompts, lengths, args.hf_batch_size)
            row["transformers"] = hf
            row["ratio"] = corral_result["output_tokens_per_s"] / hf["output_tokens_per_s"]
            line += (
                f"; transformers {hf['output_tokens_per_s']:.1f} out tok/s "
                f"({hf['elapsed_s']:.1f} s); ratio {row['ratio']:.2f}x"
            )
        print(line)
        print(
            f"{dtype}: single-request decode {decode:.1f} tok/s; ceiling {ceiling:.1f} tok/s "
            f"({weight_bytes / 1e6:.0f} MB weights at {bandwidth:.1f} GB/s read); "
            f"{100 * decode / ceiling:.0f}% of ceiling"
        )
        results[dtype] = row
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {"args": vars(args) | {"json": str(args.json)}, "results": results},
                indent=2,
                default=str,
            )
        )


if __name__ == "__main__":
    main()
