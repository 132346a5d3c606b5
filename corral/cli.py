"""corral's command line: `corral <command> ...`. Each command lives in its own module, which
provides add_arguments(parser) and run(args) -> int; only the invoked command's module is
imported."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# command -> (module, one-line help)
COMMANDS = {
    "serve": ("corral.serve.cli", "start the OpenAI-compatible server"),
    "generate": ("corral.engine.generate_cli", "generate text offline for prompts"),
    "bench": ("corral.bench.cli", "benchmark a server or the engine"),
    "simulate": ("corral.sim.cli", "simulate serving on a virtual clock"),
    "predictor": ("corral.predict.cli", "train and evaluate length predictors"),
    "router": ("corral.cluster.router_cli", "route requests over several corral serve replicas"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with a command, that command's own arguments are added (its module loaded)."""
    parser = argparse.ArgumentParser(prog="corral", description="corral: LLM inference serving")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(module_name)
            module.add_arguments(sub)
            sub.set_defaults(handler=module.run)
    return parser


def _command_in(argv: list[str]) -> str | None:
    return next((arg for arg in argv if arg in COMMANDS), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(_command_in(argv)).parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
