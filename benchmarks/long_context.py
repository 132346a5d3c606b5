"""Long context on one CPU: prefill of 8k/16k/32k-token prompts (TTFT and peak memory, with and
without key-chunked prefill attention), and decode with attention sinks at 4x the context
against a window-free run at 1x.

    .venv/bin/python -m benchmarks.long_context [--json-out docs/figures/long_context.json]

The model: SmolLM-135M's widths (hidden 576, 9 query / 3 KV heads of 64, MLP 1536) with 4
layers, random bf16 weights (a 32k prefill of all 30 layers takes minutes here). Each prefill
runs in its own process so that its peak resident memory (ru_maxrss) is its own; the figure is
the peak during the prompt less the memory after loading (weights, KV pool, runtime).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import machine

SHAPE = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=4,
    num_attention_heads=9,
    num_key_value_heads=3,
    vocab_size=2048,
)
PROMPT_LENS = (8192, 16384, 32768)
DECODE_CONTEXT = 1024  # the sinks model's max_position_embeddings
SINK_POLICY = "sink:4,window:1020"


def build_model(out_dir: Path, max_positions: int) -> Path:
    from corral.demo.bpe import train_byte_level_bpe
    from corral.demo.fallback import fallback_corpus
    from corral.demo.random_model import build_random_model

    path = out_dir / f"model-{max_positions}"
    if not (path / "config.json").is_file():
        tokenizer = train_byte_level_bpe(fallback_corpus()[:20000], vocab_size=300)
        build_random_model(
            path,
            architecture="llama",
            seed=0,
            dtype="bfloat16",
            initializer_range=0.02,
            tokenizer=tokenizer,
            max_position_embeddings=max_positions,
            **SHAPE,
        )
    return path


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


MODES = ("key-chunked", "single-pass", "bf16-matmuls")


def prefill_child(model: str, prompt_len: int, mode: str) -> dict[str, Any]:
    """In this process: load, then time one prompt of prompt_len tokens to its first token.
    mode: key-chunked (the engine's way), single-pass (every key at once: scores grow with
    the context), bf16-matmuls (attention's batched matmuls in bfloat16 even where the CPU has
    no native bf16, as before this benchmark)."""
    import torch

    from corral import LLM, SamplingParams
    from corral.model.layers import attention

    if mode == "single-pass":
        attention._KEY_CHUNK = 1 << 30
    if mode == "bf16-matmuls":
        attention.attention_matmul_dtype = lambda dtype, device: dtype
    llm = LLM(
        model=model,
        max_model_len=prompt_len + 8,
        num_blocks=(prompt_len + 64) // 16,
        max_num_batched_tokens=2048,
        enable_prefix_caching=False,
    )
    params = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    warm = torch.randint(3, 2048, (64,)).tolist()
    llm.generate([{"prompt_token_ids": warm}], params, use_tqdm=False)
    after_load = _rss_bytes()
    prompt = torch.randint(3, 2048, (prompt_len,), generator=torch.Generator().manual_seed(1))
    start = time.perf_counter()
    llm.generate([{"prompt_token_ids": prompt.tolist()}], params, use_tqdm=False)
    ttft_s = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return dict(
        prompt_len=prompt_len,
        mode=mode,
        ttft_s=round(ttft_s, 3),
        rss_after_load_mib=round(after_load / 2**20, 1),
        peak_rss_mib=round(peak / 2**20, 1),
        prefill_peak_mib=round((peak - after_load) / 2**20, 1),
    )


def run_prefills(model: Path) -> list[dict[str, Any]]:
    cases = [(n, mode) for n in PROMPT_LENS for mode in MODES[:2]]
    cases += [(2048, "key-chunked"), (2048, "bf16-matmuls")]  # bf16 batched matmuls: slow here
    rows = []
    for prompt_len, mode in cases:  # one process per case: its own peak memory
        command = [sys.executable, "-m", "benchmarks.long_context", "--child-prefill"]
        command += [str(model), str(prompt_len), mode]
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        row = json.loads(result.stdout.strip().splitlines()[-1])
        print(row, flush=True)
        rows.append(row)
    return rows


def decode_step_ms(llm, prompt_len: int, num_tokens: int, window: tuple[int, int]) -> float:
    """Median ms of the decode steps of one stream at positions [window) of its sequence."""
    import torch

    from corral import SamplingParams

    engine = llm.engine
    prompt = torch.randint(3, 2048, (prompt_len,), generator=torch.Generator().manual_seed(2))
    # No detokenizing: random ids past the small tokenizer decode to nothing, and the
    # incremental window would grow with the sequence (a cost of this model, not of sinks).
    params = SamplingParams(temperature=0, max_tokens=num_tokens, ignore_eos=True, detokenize=False)
    engine.add_request("stream", {"prompt_token_ids": prompt.tolist()}, params)
    times = []
    position = prompt_len - 1  # the prompt's step computes it and samples one token
    while engine.has_unfinished_requests():
        start = time.perf_counter()
        engine.step()
        elapsed = time.perf_counter() - start
        if window[0] <= position < window[1]:
            times.append(elapsed)
        position += 1
    return statistics.median(times) * 1e3


def run_decode(model: Path, num_rounds: int) -> dict[str, Any]:
    from corral import LLM

    context = DECODE_CONTEXT
    quarter = context // 4
    full = LLM(model=str(model), max_model_len=context, num_blocks=context // 16 + 8)
    sinks = LLM(
        model=str(model),
        max_model_len=4 * context,
        kv_window_policy=SINK_POLICY,
        num_blocks=context // 16 + 8,  # the same pool: a quarter of the sequence it serves
    )
    full_ms, sinks_ms = [], []
    for _ in range(num_rounds):  # alternating, so that both see the same machine
        full_ms.append(decode_step_ms(full, 16, context - 16, (context - quarter, context)))
        last = (4 * context - quarter, 4 * context)
        sinks_ms.append(decode_step_ms(sinks, 16, 4 * context - 16, last))
    ratios = [s / f for s, f in zip(sinks_ms, full_ms)]
    return dict(
        context=context,
        policy=SINK_POLICY,
        window_free_at_1x_ms=[round(ms, 3) for ms in full_ms],
        sinks_at_4x_ms=[round(ms, 3) for ms in sinks_ms],
        sinks_over_window_free_per_round=[round(r, 3) for r in ratios],
        sinks_over_window_free_median=round(statistics.median(ratios), 3),
        measured_over="the last quarter of each run's positions (median step time, one stream)",
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json-out", default=None)
    parser.add_argument("--child-prefill", nargs=3, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--decode-rounds", type=int, default=5)
    parser.add_argument(
        "--skip-prefill", action="store_true", help="decode only (keeps --json-out's prefills)"
    )
    args = parser.parse_args(argv)
    if args.child_prefill:
        model, prompt_len, mode = args.child_prefill
        print(json.dumps(prefill_child(model, int(prompt_len), mode)))
        return {}
    out_dir = Path(tempfile.gettempdir()) / "corral-long-context-bench"
    result: dict[str, Any] = dict(machine=machine(), shape=SHAPE)
    if not args.skip_prefill:
        result["prefill"] = run_prefills(build_model(out_dir, max(PROMPT_LENS) + 64))
    elif args.json_out and Path(args.json_out).is_file():  # keep the last run's prefills
        earlier = json.loads(Path(args.json_out).read_text())
        result["prefill"] = earlier.get("prefill")
        result["prefill_machine"] = earlier.get("prefill_machine", earlier.get("machine"))
    result["decode"] = run_decode(build_model(out_dir, DECODE_CONTEXT), args.decode_rounds)
    print(json.dumps(result["decode"]))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
