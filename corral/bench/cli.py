"""`corral bench`: serve | throughput | latency | sweep.

    corral bench serve --base-url http://127.0.0.1:8000 --dataset azure-conv --num-requests 200 \
        --length-scale 0.25 --time-scale 0.1 --slo ttft_ms=1000,tpot_ms=200 --plot plots/
    corral bench throughput --model DIR --backend corral,transformers --dataset azure-conv \
        --num-requests 64 --length-scale 0.25
    corral bench latency --model DIR --batch-size 8 --input-len 128 --output-len 32
    corral bench sweep --base-url URL --dataset azure-conv --request-rates 0.5,1,2 \
        --slo ttft_ms=1000 --plot sweep.png
"""

from __future__ import annotations

import argparse
import logging

from corral.bench import serve_cli, sweep_cli
from corral.bench.offline import latency_cli, throughput_cli

logger = logging.getLogger(__name__)

# subcommand -> (module with add_arguments(parser) and run(args), help)
SUBCOMMANDS = {
    "serve": (serve_cli, "drive an OpenAI-compatible server with a workload"),
    "throughput": (throughput_cli, "offline engine throughput (no HTTP)"),
    "latency": (latency_cli, "latency of one batch, repeated (no HTTP)"),
    "sweep": (sweep_cli, "bench serve at several request rates or concurrencies"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="bench_command", required=True)
    for name, (module, help_text) in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub)
        sub.set_defaults(bench_handler=module.run)


def run(args: argparse.Namespace) -> int:
    try:
        return args.bench_handler(args)
    except (ValueError, FileNotFoundError) as error:
        logger.error("%s", error)
        return 2
