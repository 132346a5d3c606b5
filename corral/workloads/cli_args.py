"""Command-line flags for a workload, shared by `corral bench` and `corral simulate`.

Flag names avoid the engine's (--seed, --tokenizer, --max-model-len) so both fit one parser.
"""

from __future__ import annotations

import argparse

from corral.workloads.arrivals import ARRIVAL_PROCESSES, ArrivalOptions
from corral.workloads.datasets import DATASETS
from corral.workloads.options import WorkloadOptions


def add_workload_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = WorkloadOptions()
    group = parser.add_argument_group("workload")
    group.add_argument("--dataset", default=defaults.dataset, choices=DATASETS.names())
    group.add_argument("--num-requests", type=int, default=None, help="default: all, or 1000")
    group.add_argument("--workload-seed", type=int, default=defaults.seed)
    group.add_argument(
        "--data-dir", default=None, help="default: $CORRAL_DATA_DIR or ../shared/data"
    )
    group.add_argument("--dataset-path", default=None, help="a JSONL file, or another trace CSV")
    group.add_argument("--dataset-tokenizer", default=None, help="tokenizer dir for text datasets")
    group.add_argument("--vocab-size", type=int, default=defaults.vocab_size)
    group.add_argument(
        "--arrival",
        choices=ARRIVAL_PROCESSES.names(),
        default=None,
        help="default: trace for timed datasets, poisson with --request-rate, else burst",
    )
    group.add_argument("--request-rate", type=float, default=None, help="requests/s")
    group.add_argument("--burstiness-cv", type=float, default=None, help="gamma gaps' CV")
    group.add_argument("--time-scale", type=float, default=1.0, help="trace gaps x this")
    group.add_argument("--length-scale", type=float, default=defaults.length_scale)
    group.add_argument("--max-prompt-len", type=int, default=None)
    group.add_argument("--max-output-len", type=int, default=None)
    group.add_argument("--max-request-len", type=int, default=None, help="prompt + output cap")
    group.add_argument("--input-len", type=int, default=defaults.input_len)
    group.add_argument("--output-len", type=int, default=defaults.output_len)
    group.add_argument("--range-ratio", type=float, default=defaults.range_ratio)
    group.add_argument("--length-distribution", choices=("uniform", "lognormal"), default="uniform")
    group.add_argument("--prefix-len", type=int, default=defaults.prefix_len)
    group.add_argument("--num-groups", type=int, default=defaults.num_groups)
    group.add_argument(
        "--num-rag-chunks",
        type=int,
        default=defaults.num_rag_chunks,
        help="rag: documents retrieved per request, from a pool of --num-groups",
    )
    group.add_argument("--trace-offset", type=int, default=defaults.trace_offset)
    group.add_argument("--sample-fraction", type=float, default=defaults.sample_fraction)
    group.add_argument("--gsm8k-split", choices=("train", "test"), default=defaults.split)
    group.add_argument("--num-shots", type=int, default=defaults.num_shots)
    group.add_argument("--num-turns", type=int, default=defaults.num_turns)
    group.add_argument(
        "--think-time-s",
        type=float,
        default=defaults.think_time_s,
        help="multi-turn: the pause before each follow-up (a tool call's latency), its mean",
    )
    group.add_argument(
        "--think-time-dist",
        default=defaults.think_time_dist,
        help="how pauses vary around --think-time-s: fixed, exponential, lognormal:SIGMA "
        "(tool latencies with a long tail), or measured:PATH (replay measured tool latencies, "
        "seconds one per line, e.g. from benchmarks/tool_latencies.py; rescaled to "
        "--think-time-s when it is > 0)",
    )
    group.add_argument("--fixed-output-len", type=int, default=None)
    group.add_argument("--num-clients", type=int, default=0, help="tag requests client-0..")
    group.add_argument("--num-priorities", type=int, default=0, help="random priorities 0..")
    group.add_argument(
        "--samples-per-request",
        type=int,
        default=None,
        help="n of each request: samples sharing its prompt (default: reasoning 8, else 1)",
    )
    group.add_argument(
        "--reasoning-output-len",
        type=int,
        default=defaults.reasoning_output_len,
        help="reasoning: mean output length (lognormal), capped by the context",
    )
    group.add_argument(
        "--reasoning-output-sigma",
        type=float,
        default=defaults.reasoning_output_sigma,
        help="reasoning: sigma of the lognormal output lengths (0: all the mean)",
    )


def arrival_options_from_args(args: argparse.Namespace) -> ArrivalOptions | None:
    kind = args.arrival
    if kind is None:
        if args.burstiness_cv is not None:
            kind = "gamma"
        elif args.request_rate is not None:
            kind = "poisson"
        elif args.time_scale != 1.0:
            kind = "trace"
        else:
            return None
    cv = args.burstiness_cv if args.burstiness_cv is not None else 1.0
    return ArrivalOptions(kind, rate=args.request_rate, cv=cv, time_scale=args.time_scale)


def workload_options_from_args(args: argparse.Namespace) -> WorkloadOptions:
    return WorkloadOptions(
        dataset=args.dataset,
        num_requests=args.num_requests,
        seed=args.workload_seed,
        arrival=arrival_options_from_args(args),
        data_dir=args.data_dir,
        dataset_path=args.dataset_path,
        tokenizer=args.dataset_tokenizer,
        vocab_size=args.vocab_size,
        length_scale=args.length_scale,
        max_prompt_len=args.max_prompt_len,
        max_output_len=args.max_output_len,
        max_model_len=args.max_request_len,
        input_len=args.input_len,
        output_len=args.output_len,
        range_ratio=args.range_ratio,
        length_distribution=args.length_distribution,
        prefix_len=args.prefix_len,
        num_groups=args.num_groups,
        num_rag_chunks=args.num_rag_chunks,
        trace_offset=args.trace_offset,
        sample_fraction=args.sample_fraction,
        split=args.gsm8k_split,
        num_shots=args.num_shots,
        num_turns=args.num_turns,
        think_time_s=args.think_time_s,
        think_time_dist=getattr(args, "think_time_dist", "fixed"),
        fixed_output_len=args.fixed_output_len,
        num_clients=args.num_clients,
        num_priorities=args.num_priorities,
        samples_per_request=getattr(args, "samples_per_request", None),
        reasoning_output_len=getattr(args, "reasoning_output_len", 1536),
        reasoning_output_sigma=getattr(args, "reasoning_output_sigma", 0.5),
    )
