"""Command-line flags for every engine option, shared by `serve`, `generate` and `bench`."""

from __future__ import annotations

import argparse
from typing import Any

from corral.config import (
    CPU_ISA_CAPS,
    CacheConfig,
    EngineConfig,
    KVEventsConfig,
    LoRAConfig,
    ModelConfig,
    SchedulerConfig,
    SpeculativeConfig,
)
from corral.kv_transfer.cli_args import add_kv_transfer_arguments, kv_transfer_config_from_args


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    model, cache, sched = ModelConfig(), CacheConfig(), SchedulerConfig()
    group = parser.add_argument_group("engine")
    group.add_argument("--model", default=None, help="Hugging Face model directory (default: demo)")
    group.add_argument("--tokenizer", default=None, help="tokenizer directory (default: --model)")
    group.add_argument("--dtype", default=model.dtype, help="auto, bfloat16, float16, float32")
    group.add_argument("--device", default=model.device, help="auto, cpu, cuda, cuda:N")
    group.add_argument("--max-model-len", type=int, default=None, help="context length cap")
    group.add_argument("--seed", type=int, default=model.seed)
    group.add_argument("--num-threads", type=int, default=0, help="torch CPU threads (0: default)")
    group.add_argument(
        "--cpu-isa",
        choices=CPU_ISA_CAPS,
        default=None,
        help="cap the CPU instruction sets corral's kernels, PyTorch and oneDNN use: avx512_bf16 "
        "(no AMX, as on AMD Zen 4) or avx2 (no AVX-512); default: CORRAL_CPU_ISA, else native",
    )
    group.add_argument(
        "--no-huge-pages",
        dest="huge_pages",
        action="store_false",
        help="keep the weights and the KV pool on ordinary 4 KiB pages (default: 2 MiB pages on "
        "the CPU where transparent huge pages are 'madvise' or 'always')",
    )
    group.add_argument(
        "--tensor-parallel-size",
        type=int,
        default=1,
        help="split attention heads, KV heads and the MLP over N processes (all-reduce: gloo on "
        "CPU, NCCL on CUDA); each rank gets num-threads / N torch threads (docs/placement.md)",
    )
    group.add_argument(
        "--enable-expert-parallel",
        action="store_true",
        help="with --tensor-parallel-size N on a mixture-of-experts model: each rank holds a "
        "range of whole experts and runs only the tokens routed to them, instead of a slice of "
        "every expert (docs/moe.md)",
    )
    group.add_argument(
        "--quantization",
        default=None,
        help="weight quantization at load: none, int8 (the dense layers' linears, the LM head "
        "kept), int8-all (the LM head too: faster, a little further from the model's own "
        "outputs); docs/quantization.md",
    )
    group.add_argument(
        "--offload-layers",
        type=int,
        default=0,
        help="keep N decoder layers' weights off the compute device (evenly spaced) and stream "
        "each in just before it runs, the next one while the current computes (docs/placement.md)",
    )
    group.add_argument(
        "--cpu-offload-gb",
        type=float,
        default=0.0,
        help="offload the fewest decoder layers whose weights reach this many GiB (instead of "
        "--offload-layers)",
    )
    group.add_argument(
        "--offload-to",
        default=model.offload_to,
        choices=("auto", "host", "disk"),
        help="where offloaded layers live: pinned host memory (CUDA) or a memory-mapped file "
        "(auto: host on CUDA, disk on CPU)",
    )
    group.add_argument(
        "--offload-dir", default=None, help="directory of the offload file (default: the temp dir)"
    )
    group.add_argument("--block-size", type=int, default=cache.block_size)
    group.add_argument(
        "--kv-cache-memory",
        default=None,
        help="KV pool budget: a fraction of free memory (0.3) or a size (2GiB, 500MB)",
    )
    group.add_argument("--num-kv-blocks", type=int, default=None, help="exact KV pool size")
    group.add_argument(
        "--no-prefix-caching", action="store_true", help="disable automatic prefix caching"
    )
    group.add_argument(
        "--kv-cache-dtype", default=cache.kv_cache_dtype, help="auto, int8, fp8 (quantized KV)"
    )
    group.add_argument(
        "--host-cache-memory", default=None, help="host-memory KV tier: a fraction or a size"
    )
    group.add_argument("--disk-cache-dir", default=None, help="disk KV tier directory")
    group.add_argument("--disk-cache-max-bytes", default=cache.disk_cache_max_bytes)
    group.add_argument(
        "--disk-cache-shared",
        action="store_true",
        help="other engines use the same --disk-cache-dir: their blocks are prefix hits here",
    )
    group.add_argument(
        "--kv-window-policy",
        default=None,
        metavar="sink:N,window:W",
        help="keep only the first N and the last W tokens' KV (attention sinks, StreamingLLM): "
        "generation runs past the model's context; --max-model-len may then exceed it",
    )
    group.add_argument(
        "--preemption-mode",
        default="recompute",
        choices=("recompute", "swap"),
        help="recompute, or swap to the host tier (refused without --host-cache-memory)",
    )
    group.add_argument("--max-num-seqs", type=int, default=sched.max_num_seqs)
    group.add_argument("--max-num-batched-tokens", type=int, default=sched.max_num_batched_tokens)
    group.add_argument("--no-chunked-prefill", action="store_true")
    group.add_argument(
        "--no-share-sibling-prompts",
        action="store_true",
        help="the n samples of a request each compute the prompt (default: one computes its "
        "full blocks, the others take them from the prefix cache)",
    )
    group.add_argument(
        "--session-kv-ttl-s",
        type=float,
        default=sched.session_kv_ttl_s,
        help="keep a conversation's KV on the device for up to this many seconds after a turn "
        "ends, for its next turn (requests with a session_id; reclaimed before anyone is "
        "preempted; default 0: off)",
    )
    add_rag_chunk_args(group)
    group.add_argument(
        "--long-prefill-token-threshold", type=int, default=sched.long_prefill_token_threshold
    )
    group.add_argument(
        "--scheduling-policy",
        default=sched.policy,
        help="fcfs, priority, sjf, srpt, mlfq, fair, edf; options as NAME:key=value,...",
    )
    group.add_argument(
        "--kv-reservation",
        default=sched.kv_reservation,
        help="KV reserved at admission: none, max, predicted[:headroom=0.1] (S3)",
    )
    group.add_argument(
        "--length-predictor",
        default=None,
        help="output-length predictor file (corral predictor train) for sjf/srpt/reservation",
    )
    group.add_argument(
        "--slo",
        default=None,
        help="SLO target of every class, ttft_ms=..,tpot_ms=..,e2e_ms=.. (attainment on /metrics)",
    )
    group.add_argument(
        "--slo-class",
        action="append",
        default=None,
        metavar="PRIORITY:TARGETS",
        help="SLO target of one class (requests of that priority), e.g. 0:ttft_ms=200,tpot_ms=50; "
        "repeatable",
    )
    group.add_argument(
        "--step-log",
        default=None,
        help="append each step's batch shape and duration to this JSON-lines file (fit the "
        "simulator to real serving: corral simulate profile --from-step-log)",
    )
    group.add_argument(
        "--kv-events-config",
        default=None,
        metavar="JSON",
        help="publish KV cache events for routers, as vLLM does (same JSON keys), e.g. "
        '\'{"enable_kv_cache_events": true, "publisher": "zmq", "endpoint": "tcp://*:5557", '
        '"replay_endpoint": "tcp://*:5558", "topic": "kv-events"}\' (docs/server.md)',
    )
    group.add_argument("--debug-check-integrity", action="store_true")
    group.add_argument(
        "--structured-output-backend",
        default="xgrammar",
        help="the grammar library that enforces response_format, guided_* and forced tool "
        "calls (default xgrammar)",
    )
    add_speculative_arguments(parser)
    add_lora_arguments(parser)
    add_kv_transfer_arguments(parser)


def add_lora_arguments(parser: argparse.ArgumentParser) -> None:
    """Multi-LoRA's flags (corral serve, generate and simulate)."""
    lora = LoRAConfig()
    group = parser.add_argument_group("multi-LoRA")
    group.add_argument(
        "--lora-modules",
        nargs="+",
        default=[],
        metavar="NAME=PATH",
        help="LoRA adapters (PEFT directories) to serve, each selected by `model: NAME`",
    )
    group.add_argument(
        "--enable-lora",
        action="store_true",
        help="serve LoRA adapters (implied by --lora-modules; needed for adapters loaded later)",
    )
    group.add_argument(
        "--max-loras",
        type=int,
        default=lora.max_loras,
        help=f"adapters resident in the compute pool at once (default {lora.max_loras})",
    )
    group.add_argument(
        "--max-lora-rank",
        type=int,
        default=lora.max_lora_rank,
        help=f"the largest adapter rank served (default {lora.max_lora_rank})",
    )
    group.add_argument(
        "--max-cpu-loras",
        type=int,
        default=None,
        help="adapters kept in the host-memory LRU cache (default 4 x --max-loras)",
    )
    group.add_argument(
        "--max-num-lora-bypasses",
        type=int,
        default=lora.max_num_lora_bypasses,
        help="how often requests of resident adapters may start ahead of one waiting for an "
        f"adapter slot (fairness bound, default {lora.max_num_lora_bypasses})",
    )


def parse_lora_modules(values: list[str]) -> tuple[tuple[str, str], ...]:
    """NAME=PATH items -> pairs; ValueError naming a malformed item."""
    pairs = []
    for item in values:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--lora-modules item {item!r} is not NAME=PATH")
        pairs.append((name, path))
    return tuple(pairs)


def lora_config_from_args(args: argparse.Namespace) -> LoRAConfig:
    return LoRAConfig(
        enable_lora=args.enable_lora,
        max_loras=args.max_loras,
        max_lora_rank=args.max_lora_rank,
        max_cpu_loras=args.max_cpu_loras,
        max_num_lora_bypasses=args.max_num_lora_bypasses,
        lora_modules=parse_lora_modules(args.lora_modules),
    )


def add_speculative_arguments(parser: argparse.ArgumentParser) -> None:
    """Speculative decoding's flags (corral serve, generate and simulate)."""
    group = parser.add_argument_group("speculative decoding")
    group.add_argument(
        "--speculative-method",
        default=None,
        help="propose draft tokens with: ngram (prompt lookup), suffix (suffix trees over the "
        "request and recent outputs), draft (a small model, --speculative-model); default off",
    )
    group.add_argument(
        "--num-speculative-tokens",
        type=int,
        default=4,
        help="the most draft tokens per request and step (K, default 4)",
    )
    group.add_argument(
        "--speculative-model",
        default=None,
        help="the draft model of --speculative-method draft: a directory or a bundled name "
        "(corral-demo-draft)",
    )
    group.add_argument(
        "--speculative-tokens-rule",
        choices=("adaptive", "fixed"),
        default="adaptive",
        help="adaptive (default): K per request and step from measured acceptance and step "
        "cost, down to 0 when speculation would cost throughput; fixed: always K",
    )
    group.add_argument("--speculative-ngram-min", type=int, default=2)
    group.add_argument("--speculative-ngram-max", type=int, default=4)


def speculative_config_from_args(args: argparse.Namespace) -> SpeculativeConfig:
    return SpeculativeConfig(
        method=args.speculative_method,
        num_speculative_tokens=args.num_speculative_tokens,
        model=args.speculative_model,
        num_tokens_rule=args.speculative_tokens_rule,
        ngram_min=args.speculative_ngram_min,
        ngram_max=args.speculative_ngram_max,
    )


def engine_config_from_args(args: argparse.Namespace, **overrides: Any) -> EngineConfig:
    model = ModelConfig(
        model=args.model,
        tokenizer=args.tokenizer,
        dtype=args.dtype,
        device=args.device,
        max_model_len=args.max_model_len,
        seed=args.seed,
        num_threads=args.num_threads,
        cpu_isa=getattr(args, "cpu_isa", None),
        huge_pages=getattr(args, "huge_pages", True),
        quantization=getattr(args, "quantization", None),
        tensor_parallel_size=getattr(args, "tensor_parallel_size", 1),
        enable_expert_parallel=getattr(args, "enable_expert_parallel", False),
        offload_layers=getattr(args, "offload_layers", 0),
        cpu_offload_gb=getattr(args, "cpu_offload_gb", 0.0),
        offload_to=getattr(args, "offload_to", "auto"),
        offload_dir=getattr(args, "offload_dir", None),
    )
    cache = CacheConfig(
        block_size=args.block_size,
        kv_cache_memory=args.kv_cache_memory,
        num_blocks=args.num_kv_blocks,
        enable_prefix_caching=not args.no_prefix_caching,
        kv_cache_dtype=args.kv_cache_dtype,
        host_cache_memory=args.host_cache_memory,
        disk_cache_dir=args.disk_cache_dir,
        disk_cache_max_bytes=args.disk_cache_max_bytes,
        disk_cache_shared=args.disk_cache_shared,
        kv_window_policy=args.kv_window_policy,
    )
    scheduler = scheduler_config_from_args(args)
    return EngineConfig(
        model=model,
        cache=cache,
        scheduler=scheduler,
        speculative=speculative_config_from_args(args),
        lora=lora_config_from_args(args),
        structured_output_backend=args.structured_output_backend,
        debug_check_integrity=args.debug_check_integrity,
        step_log_path=args.step_log,
        kv_events=kv_events_config_from_args(args),
        kv_transfer=kv_transfer_config_from_args(args),
        **overrides,
    )


def kv_events_config_from_args(args: argparse.Namespace) -> KVEventsConfig:
    text = getattr(args, "kv_events_config", None)
    return KVEventsConfig.from_json(text) if text else KVEventsConfig()


def scheduler_config_from_args(args: argparse.Namespace) -> SchedulerConfig:
    """The scheduler's flags (shared by `corral serve`, `corral generate` and `corral simulate`;
    commands without --preemption-mode get recompute)."""
    return SchedulerConfig(
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        enable_chunked_prefill=not args.no_chunked_prefill,
        long_prefill_token_threshold=args.long_prefill_token_threshold,
        policy=args.scheduling_policy,
        preemption_mode=getattr(args, "preemption_mode", "recompute"),
        kv_reservation=args.kv_reservation,
        length_predictor=args.length_predictor,
        # The simulator's --slo (goodput) is the same default target.
        slo=getattr(args, "slo", None),
        slo_classes=tuple(getattr(args, "slo_class", None) or ()),
        share_sibling_prompts=not getattr(args, "no_share_sibling_prompts", False),
        session_kv_ttl_s=getattr(args, "session_kv_ttl_s", 0.0),
        rag_chunk_reuse=getattr(args, "rag_chunk_reuse", False),
        rag_recompute_ratio=getattr(args, "rag_recompute_ratio", 0.15),
    )


def add_rag_chunk_args(group: argparse._ArgumentGroup) -> None:
    """--rag-chunk-reuse and --rag-recompute-ratio (docs/rag.md), for serve and simulate."""
    group.add_argument(
        "--rag-chunk-reuse",
        action="store_true",
        help="reuse the KV of a request's rag_chunks at any position, recomputing a share of "
        "each chunk's tokens (approximate; default off)",
    )
    group.add_argument(
        "--rag-recompute-ratio",
        type=float,
        default=SchedulerConfig().rag_recompute_ratio,
        help="share of each reused chunk's tokens recomputed, those whose KV deviates most "
        "(default 0.15)",
    )
