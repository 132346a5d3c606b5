"""`corral bench throughput`: a workload's requests submitted at once to an in-process backend
(the corral engine, or transformers `generate` with static batches), timed end to end.

Prompts are the workload's token ids over the model's vocabulary; every request generates
exactly its output length (EOS ignored); nothing is detokenized. Arrival times are ignored.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from corral.engine.engine_args import add_engine_arguments, engine_config_from_args
from corral.workloads.cli_args import add_workload_arguments, workload_options_from_args


def backend_names(text: str) -> list[str]:
    from corral.bench.offline import corral_backend, hf_backend  # noqa: F401 - registration
    from corral.bench.offline.backends import OFFLINE_BACKENDS

    names = [name.strip() for name in text.split(",") if name.strip()]
    for name in names:
        OFFLINE_BACKENDS.get(name)  # ValueError naming the known backends
    if not names:
        raise ValueError("--backend needs at least one name (corral, transformers)")
    return names


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend", default="corral", help="corral, transformers, or both: corral,transformers"
    )
    parser.add_argument("--hf-batch-size", type=int, default=16, help="transformers batch size")
    parser.add_argument("--result-json", default=None, help="write the results here")
    add_engine_arguments(parser)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_backend_arguments(parser)
    add_workload_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import torch

    from corral.bench.offline.backends import BackendOptions, make_backend
    from corral.bench.offline.measure import measure_throughput, workload_requests
    from corral.bench.serve_cli import write_json
    from corral.model.arch import ModelArch
    from corral.model.resolve import resolve_model_dir
    from corral.workloads import build_workload

    names = backend_names(args.backend)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    engine = engine_config_from_args(args)
    options = BackendOptions(engine, batch_size=args.hf_batch_size)
    arch = ModelArch.from_dir(resolve_model_dir(engine.model.model))
    workload_options = replace(
        workload_options_from_args(args),
        vocab_size=arch.vocab_size,
        max_model_len=args.max_request_len or args.max_model_len,
    )
    workload = build_workload(workload_options)
    prompts, output_lens = workload_requests(workload)
    print(
        f"workload: {workload.name}, {len(prompts)} requests, prompt mean "
        f"{sum(map(len, prompts)) / len(prompts):.0f}, output mean "
        f"{sum(output_lens) / len(output_lens):.0f} tokens, submitted at once; "
        f"torch threads {torch.get_num_threads()}"
    )
    results = []
    for name in names:
        backend = make_backend(name, options)
        results.append(measure_throughput(backend, name, prompts, output_lens))
        del backend
        print(results[-1].describe())
    base = results[-1]
    for result in results[:-1]:
        ratio = result.output_tokens_per_s / base.output_tokens_per_s
        print(f"{result.backend} / {base.backend}: {ratio:.2f}x output tokens/s")
    if args.result_json:
        write_json(
            args.result_json,
            {
                "tool": "corral bench throughput",
                "workload": workload.description,
                "results": [result.to_dict() for result in results],
            },
        )
        print(f"wrote {args.result_json}")
    return 0
