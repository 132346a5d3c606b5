"""Mixture-of-experts decode speed: a small random Mixtral-shaped model against a dense Llama with
the same active parameters per token, at batch 1 and batch 32.

Models (random weights, built into a temporary directory, never downloaded): both have hidden
512, 8 query / 2 KV heads, 4 layers and a 8192-token vocabulary. The MoE model has 8 SwiGLU
experts of intermediate 1024 per layer with top-2 routing; the dense model one SwiGLU MLP of
intermediate 2048 = top-2 x 1024, so a token computes with the same weights in both (the router's
8 x 512 per layer aside). dtype: bfloat16 unless --dtype says otherwise.

Workload: `batch` requests of 32 random prompt tokens each, submitted at once (max_num_seqs =
batch), greedy, EOS ignored. The engine is stepped by hand: one step prefills every prompt, a few
warm-up decode steps follow, then `steps` decode steps are timed one by one (every request
decodes in each). Decode step time = the median of those; output tok/s = batch / step time. The
MoE layer is then timed phase by phase on the hidden states of a decode step (SparseMoE.phases:
routing, dispatch = counting and sorting the assignments and gathering their rows, the experts'
matmuls, combine = weighting and summing rows back per token), next to the dense model's MLP on
the same rows (dense_mlp).

Target (issue 20): the MoE model's decode step within 1.5x of the dense model's at batch 32.

    .venv/bin/python benchmarks/moe.py             # about 1 minute on 2 cores
    .venv/bin/python benchmarks/moe.py --quick     # smoke test
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
from corral import LLM, SamplingParams  # noqa: E402
from corral.model.arch import ModelArch  # noqa: E402

TARGET_RATIO = 1.5  # MoE step time / dense step time at batch 32
PROMPT_LEN = 32
SHAPE = dict(
    hidden_size=512,
    num_attention_heads=8,
    num_key_value_heads=2,
    num_hidden_layers=4,
    vocab_size=8192,
    max_position_embeddings=1024,
    rope_theta=10000.0,
)
EXPERT_INTERMEDIATE = 1024
NUM_EXPERTS, TOP_K = 8, 2
QUICK_SHAPE = dict(SHAPE, hidden_size=64, num_hidden_layers=2, vocab_size=512)


def build_models(out_dir: Path, shape: dict[str, Any], expert_intermediate: int, dtype: str):
    """(MoE model dir, dense model dir): Mixtral-shaped and Llama with top_k x the experts'
    intermediate size, same attention, embeddings and seed."""
    from corral.demo.bpe import train_byte_level_bpe
    from corral.demo.fallback import fallback_corpus
    from corral.demo.random_model import build_random_model

    tokenizer = train_byte_level_bpe(fallback_corpus()[:20000], vocab_size=300)
    common = dict(seed=0, dtype=dtype, initializer_range=0.02, tokenizer=tokenizer, **shape)
    moe = build_random_model(
        out_dir / "moe",
        architecture="mixtral",
        intermediate_size=expert_intermediate,
        num_local_experts=NUM_EXPERTS,
        num_experts_per_tok=TOP_K,
        **common,
    )
    dense = build_random_model(
        out_dir / "dense",
        architecture="llama",
        intermediate_size=TOP_K * expert_intermediate,
        **common,
    )
    return moe, dense


def decode_step_times(llm: LLM, batch: int, steps: int, warmup: int, seed: int) -> list[float]:
    """Seconds of each of `steps` decode steps of `batch` requests (after one prefill step and
    `warmup` decode steps); the requests are aborted afterwards."""
    engine = llm.engine
    generator = torch.Generator().manual_seed(seed)
    vocab = engine.vocab_size
    params = SamplingParams(temperature=0, max_tokens=warmup + steps + 8, ignore_eos=True)
    ids = [f"r{seed}-{i}" for i in range(batch)]
    for request_id in ids:
        prompt = torch.randint(3, vocab, (PROMPT_LEN,), generator=generator).tolist()
        engine.add_request(request_id, {"prompt_token_ids": prompt}, params)
    engine.step()  # every prompt in one step (batch x 32 <= max_num_batched_tokens)
    for _ in range(warmup):
        engine.step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - start)
    engine.abort_request(ids)
    while engine.has_unfinished_requests():
        engine.step()
    return times


def moe_phase_times(llm: LLM, batch: int, repeats: int) -> dict[str, float]:
    """Median ms per MoE layer of each SparseMoE phase on `batch` random hidden rows."""
    model = llm.engine.executor.model
    layer = next(layer for layer in model.layers if layer.moe is not None)
    hidden = torch.randn(batch, model.arch.hidden_size, generator=torch.Generator().manual_seed(1))
    hidden = hidden.to(model.dtype)
    samples: dict[str, list[float]] = {}
    with torch.inference_mode():
        for _ in range(repeats):
            for phase, seconds in layer.moe.timed_phases(hidden).items():
                samples.setdefault(phase, []).append(seconds * 1e3)
        layer.moe.reset_counts()
    return {phase: round(statistics.median(values), 4) for phase, values in samples.items()}


def dense_mlp_ms(llm: LLM, batch: int, repeats: int) -> float:
    """Median ms of the dense model's MLP (one layer) on `batch` random hidden rows."""
    from corral.model.layers.linear import linear
    from corral.model.layers.moe import silu_and_mul

    model = llm.engine.executor.model
    layer = model.layers[0]
    hidden = torch.randn(batch, model.arch.hidden_size, generator=torch.Generator().manual_seed(1))
    hidden = hidden.to(model.dtype)
    samples = []
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            linear(silu_and_mul(linear(hidden, layer.gate_up)), layer.down)
            samples.append((time.perf_counter() - start) * 1e3)
    return round(statistics.median(samples), 4)


def run(
    shape: dict[str, Any] | None = None,
    expert_intermediate: int = EXPERT_INTERMEDIATE,
    batches: tuple[int, ...] = (1, 32),
    steps: int = 40,
    warmup: int = 5,
    dtype: str = "bfloat16",
    rounds: int = 5,
) -> dict[str, Any]:
    """Measure both models at each batch size; rounds alternate the models and the step
    times of all rounds are pooled before taking the median."""
    shape = shape or SHAPE
    rows = []
    with tempfile.TemporaryDirectory(prefix="corral-moe-bench-") as tmp:
        dirs = dict(
            zip(("moe", "dense"), build_models(Path(tmp), shape, expert_intermediate, dtype))
        )
        arches = {name: ModelArch.from_dir(path) for name, path in dirs.items()}
        llms = {
            name: LLM(
                model=str(path),
                dtype=dtype,
                max_num_seqs=max(batches),
                max_model_len=PROMPT_LEN + warmup + steps + 16,
                num_blocks=max(batches) * 8 + 8,
                block_size=16,
            )
            for name, path in dirs.items()
        }
        phases = {}
        for batch in batches:
            samples: dict[str, list[float]] = {"moe": [], "dense": []}
            for round_index in range(rounds):
                order = ("moe", "dense") if round_index % 2 == 0 else ("dense", "moe")
                for name in order:
                    samples[name] += decode_step_times(
                        llms[name], batch, steps, warmup, seed=round_index
                    )
            step_ms = {name: statistics.median(values) * 1e3 for name, values in samples.items()}
            for name in ("moe", "dense"):
                rows.append(
                    dict(
                        model=name,
                        batch=batch,
                        step_ms=round(step_ms[name], 3),
                        output_tok_s=round(batch / step_ms[name] * 1e3, 1),
                        ratio_to_dense=round(step_ms[name] / step_ms["dense"], 3),
                    )
                )
            phases[str(batch)] = moe_phase_times(llms["moe"], batch, repeats=50)
            phases[str(batch)]["dense_mlp"] = dense_mlp_ms(llms["dense"], batch, repeats=50)
        at_target = next(
            (r for r in rows if r["model"] == "moe" and r["batch"] == max(batches)), None
        )
        return dict(
            description="decode step time, MoE (Mixtral-shaped) vs dense Llama of equal "
            "active parameters; batch requests of 32 prompt tokens, greedy",
            dtype=dtype,
            shape=dict(shape, expert_intermediate=expert_intermediate),
            params={
                name: dict(total=arch.num_params(), active=arch.num_active_params())
                for name, arch in arches.items()
            },
            steps_per_round=steps,
            rounds=rounds,
            rows=rows,
            moe_layer_phases_ms=phases,
            target=dict(
                ratio=TARGET_RATIO,
                batch=max(batches),
                met=bool(at_target and at_target["ratio_to_dense"] <= TARGET_RATIO),
            ),
            machine=machine(torch_threads=torch.get_num_threads(), torch=torch.__version__),
        )


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| model | batch | decode step (ms) | output tok/s | step time / dense |",
        "|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['model']} | {row['batch']} | {row['step_ms']:.2f} | "
            f"{row['output_tok_s']:.1f} | {row['ratio_to_dense']:.2f}x |"
        )
    target = result["target"]
    verdict = "met" if target["met"] else "missed"
    lines.append("")
    lines.append(
        f"target (MoE step within {target['ratio']}x of dense at batch {target['batch']}): "
        f"{verdict}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a tiny model, 2 steps (smoke test)")
    parser.add_argument("--json-out", default=str(REPO / "docs" / "figures" / "moe.json"))
    args = parser.parse_args(argv)
    if args.quick:
        result = run(QUICK_SHAPE, 32, (1, 4), steps=2, warmup=1, dtype=args.dtype, rounds=1)
    else:
        result = run(steps=args.steps, dtype=args.dtype, rounds=args.rounds)
    Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    print("\nMoE layer phases (ms per layer, dense_mlp: the dense model's MLP):")
    print(json.dumps(result["moe_layer_phases_ms"]))
    return result


if __name__ == "__main__":
    main()
