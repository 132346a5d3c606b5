"""RAG chunk KV reuse (--rag-chunk-reuse) against prefix caching only: TTFT and quality.

Each request is a system line, 4-8 documents retrieved from a pool (GSM8K training problems
with their solutions, about 200-400 tokens each) in a shuffled order, and a GSM8K test question.
Every configuration first sees each document once (a warm-up request per document: the chunk
store is filled, as an offline indexer would), then serves the same requests one at a time.

TTFT: arrival to first token of each request (the engine in this process, one request at a
time, no queueing).
Quality, against the prefix-caching-only run (which computes every token exactly): greedy
agreement (the share of the first N output tokens up to the first divergence) and the mean
KL(exact || reused) of the first output token's distribution.

Two models: `speed` uses a random-weight SmolLM-135M-shaped model (30 layers, 4096-token
context, float32 unless --dtype says otherwise: bf16 matmuls crawl on CPUs without native bf16;
corral.bench.reference.smollm_shaped_text_model) for the timings, whose quality numbers say
little (random attention); `quality` uses the bundled trained demo model (2 layers, 512-token
context, so 4 shorter documents of about 60-110 tokens) at several recompute ratios.

    .venv/bin/python -m benchmarks.rag_chunk_reuse --json docs/figures/rag_chunk_reuse.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
from pathlib import Path

import torch

from corral import LLM, SamplingParams
from corral.bench.reference import smollm_shaped_text_model

DATA = Path("/work/shared/data/gsm8k")
SYSTEM = "Use the worked problems below to answer the question.\n\n"


def _records(split: str) -> list[dict]:
    with open(DATA / f"{split}.jsonl") as handle:
        return [json.loads(line) for line in handle]


def make_documents(tokenizer, num_docs: int, min_tokens: int, max_tokens: int) -> list[str]:
    """Documents of min_tokens..max_tokens tokens, each a run of GSM8K training problems."""
    documents, current = [], ""
    for record in _records("train"):
        piece = f"Problem: {record['question']}\nSolution: {record['answer']}\n\n"
        if len(tokenizer.encode(current + piece)) > max_tokens:
            if len(tokenizer.encode(current)) >= min_tokens:
                documents.append(current)
                if len(documents) == num_docs:
                    return documents
            current = ""
            continue
        current += piece
    raise ValueError(f"GSM8K gave only {len(documents)} documents of {min_tokens}+ tokens")


def make_requests(
    documents: list[str], num_requests: int, min_chunks: int, max_chunks: int, seed: int
) -> list[tuple[str, list[str]]]:
    rng = random.Random(seed)
    questions = _records("test")
    requests = []
    for index in range(num_requests):
        chosen = rng.sample(documents, rng.randint(min_chunks, max_chunks))
        question = questions[index]["question"]
        requests.append((SYSTEM + "".join(chosen) + f"Question: {question}\nAnswer:", chosen))
    return requests


def _capture_logits(llm: LLM) -> tuple[list[torch.Tensor], object]:
    model = llm.engine.executor.model
    captured: list[torch.Tensor] = []
    original = model.compute_logits

    def capture(hidden: torch.Tensor) -> torch.Tensor:
        logits = original(hidden)
        captured.append(logits[-1].float().clone())
        return logits

    model.compute_logits = capture
    return captured, lambda: delattr(model, "compute_logits")


def serve(llm: LLM, requests, use_chunks: bool, num_output_tokens: int) -> dict:
    """Per request, one at a time: TTFT (s, arrival to first token as the engine's output
    processor stamps them), greedy tokens, first-token logprobs."""
    ttfts, outputs, first_logprobs = [], [], []
    for prompt, chunks in requests:
        params = SamplingParams(
            temperature=0,
            max_tokens=num_output_tokens,
            ignore_eos=True,
            rag_chunks=chunks if use_chunks else None,
        )
        captured, restore = _capture_logits(llm)
        try:
            output = llm.generate(prompt, params, use_tqdm=False)[0]
        finally:
            restore()
        ttfts.append(output.metrics["first_token_time"] - output.metrics["arrival_time"])
        outputs.append(output.outputs[0].token_ids)
        first_logprobs.append(torch.log_softmax(captured[0].double(), dim=-1))
    return {"ttft_s": ttfts, "tokens": outputs, "first_logprobs": first_logprobs}


def warm(llm: LLM, documents: list[str], use_chunks: bool) -> None:
    for document in documents:
        prompt = SYSTEM + document + "Question: warm-up\nAnswer:"
        params = SamplingParams(max_tokens=1, rag_chunks=[document] if use_chunks else None)
        llm.generate(prompt, params, use_tqdm=False)


def quality(reference: dict, run: dict, num_tokens: int) -> dict:
    agreements, kls = [], []
    for exact, reused in zip(reference["tokens"], run["tokens"], strict=True):
        same = next((i for i, (a, b) in enumerate(zip(exact, reused)) if a != b), num_tokens)
        agreements.append(same / num_tokens)
    for p, q in zip(reference["first_logprobs"], run["first_logprobs"], strict=True):
        kls.append(float((p.exp() * (p - q)).sum()))
    first_token = [a[0] == b[0] for a, b in zip(reference["tokens"], run["tokens"])]
    return {
        "greedy_agreement": statistics.mean(agreements),
        "first_token_agreement": sum(first_token) / len(first_token),
        "first_token_kl_mean": statistics.mean(kls),
        "first_token_kl_max": max(kls),
    }


def run_part(model: str, args, doc_tokens, num_chunks, ratios, configs_llm) -> dict:
    probe = LLM(model=model, **{**configs_llm, "num_blocks": 64})
    tokenizer = probe.engine.input_processor.tokenizer
    documents = make_documents(tokenizer, args.num_docs, *doc_tokens)
    del probe
    max_prompt_tokens = configs_llm.get("max_model_len", 512) - args.num_output_tokens
    requests = [
        (prompt, chunks)
        for prompt, chunks in make_requests(
            documents, 2 * args.num_requests, *num_chunks, args.seed
        )
        if len(tokenizer.encode(prompt)) <= max_prompt_tokens
    ][: args.num_requests]
    lengths = [len(tokenizer.encode(prompt)) for prompt, _ in requests]
    results: dict = {
        "model": model,
        "num_requests": len(requests),
        "prompt_tokens_mean": statistics.mean(lengths),
        "chunks_per_request": list(num_chunks),
        "document_tokens": [len(tokenizer.encode(d, add_special_tokens=False)) for d in documents],
        "configs": {},
    }
    runs = {}
    for ratio in (None, *ratios):
        name = "prefix caching only" if ratio is None else f"chunk reuse, ratio {ratio:g}"
        fields = dict(configs_llm)
        if ratio is not None:
            fields.update(rag_chunk_reuse=True, rag_recompute_ratio=ratio)
        llm = LLM(model=model, **fields)
        warm(llm, documents, ratio is not None)
        runs[name] = serve(llm, requests, ratio is not None, args.num_output_tokens)
        stats = llm.engine.scheduler.stats()
        entry = {
            "ttft_ms_mean": 1000 * statistics.mean(runs[name]["ttft_s"]),
            "ttft_ms_median": 1000 * statistics.median(runs[name]["ttft_s"]),
            "prefix_hit_rate": stats.prefix_hit_rate,
        }
        if stats.rag_chunks is not None:
            chunks = stats.rag_chunks
            entry["chunk_store"] = {
                "hits": chunks.num_chunk_hits,
                "misses": chunks.num_chunk_misses,
                "copied_tokens": chunks.num_copied_tokens,
                "recomputed_tokens": chunks.num_recomputed_tokens,
            }
        results["configs"][name] = entry
        print(name, json.dumps(entry))
        del llm
    reference = runs["prefix caching only"]
    base_ttft = results["configs"]["prefix caching only"]["ttft_ms_mean"]
    for name, run in runs.items():
        if name != "prefix caching only":
            entry = results["configs"][name]
            entry.update(quality(reference, run, args.num_output_tokens))
            entry["ttft_speedup_vs_prefix_only"] = base_ttft / entry["ttft_ms_mean"]
            print(name, json.dumps(entry))
    return results


def cpu_info() -> dict:
    text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                  if line.startswith("Model name")), "unknown")  # fmt: skip
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("Flags")), [])  # fmt: skip
    wanted = [f for f in flags if f.startswith(("avx512", "amx"))]
    return {"model_name": model, "avx512_amx_flags": wanted, "num_cpus": os.cpu_count()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="speed,quality")
    parser.add_argument("--num-requests", type=int, default=8, help="speed part")
    parser.add_argument("--num-quality-requests", type=int, default=30, help="quality part")
    parser.add_argument("--num-docs", type=int, default=16)
    parser.add_argument("--num-output-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--dtype", default="float32", help="speed part (bfloat16 crawls on CPUs without bf16)"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report: dict = json.loads(args.json.read_text()) if args.json and args.json.exists() else {}
    report["cpu"] = cpu_info()
    report["note"] = "one shared machine (other jobs ran meanwhile): timings are same-run ratios"
    common = dict(num_threads=args.threads, enable_prefix_caching=True)
    parts = {
        "speed": lambda: run_part(
            str(smollm_shaped_text_model()),
            args,
            (200, 400),
            (4, 8),
            (0.15,),
            dict(common, dtype=args.dtype, num_blocks=3000, max_model_len=4096),
        ),
        "quality": lambda: run_part(
            "corral-demo",
            argparse.Namespace(**{**vars(args), "num_requests": args.num_quality_requests}),
            (60, 110),
            (4, 4),
            (0.0, 0.15, 0.3, 1.0),
            dict(common, dtype="float32", num_blocks=1024),
        ),
    }
    for name in args.parts.split(","):
        load_at_start = Path("/proc/loadavg").read_text()[:14]
        report[name] = parts[name]()
        report[name]["load_average_start_end"] = [
            load_at_start,
            Path("/proc/loadavg").read_text()[:14],
        ]
        report[name]["command"] = (
            f"python -m benchmarks.rag_chunk_reuse --parts {name} --num-requests "
            f"{args.num_requests} --num-quality-requests {args.num_quality_requests}"
        )
        if args.json:  # after each part, so that a later failure keeps it
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
