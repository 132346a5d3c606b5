"""`corral bench latency`: one batch of synthetic prompts, generated repeatedly; reports the
per-iteration latency (mean, median, p90, p99, max)."""

from __future__ import annotations

import argparse

from corral.bench.offline.throughput_cli import add_backend_arguments, backend_names
from corral.engine.engine_args import engine_config_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--num-iters", type=int, default=10)
    parser.add_argument("--num-warmup-iters", type=int, default=1)
    add_backend_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from corral.bench.offline.backends import BackendOptions, make_backend
    from corral.bench.offline.measure import latency_batch, measure_latency
    from corral.bench.serve_cli import write_json

    names = backend_names(args.backend)
    options = BackendOptions(engine_config_from_args(args), batch_size=args.batch_size)
    results = []
    for name in names:
        backend = make_backend(name, options)
        prompts = latency_batch(args.batch_size, args.input_len, backend.vocab_size, args.seed)
        results.append(
            measure_latency(
                backend, name, prompts, args.output_len, args.num_iters, args.num_warmup_iters
            )
        )
        del backend
        print(results[-1].describe())
    if args.result_json:
        write_json(
            args.result_json,
            {"tool": "corral bench latency", "results": [r.to_dict() for r in results]},
        )
        print(f"wrote {args.result_json}")
    return 0
