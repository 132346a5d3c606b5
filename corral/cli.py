"""corral's command line: `corral <command> ...`. Each command lives in its own module, which
provides add_arguments(parser) and run(args) -> int."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# command -> (module, one-line help). A module missing from this checkout is skipped.
COMMANDS = {
    "serve": ("corral.serve.cli", "start the OpenAI-compatible server"),
    "generate": ("corral.engine.generate_cli", "generate text offline for prompts"),
    "bench": ("corral.bench.cli", "benchmark a server or the engine"),
    "simulate": ("corral.sim.cli", "simulate serving on a virtual clock"),
    "predictor": ("corral.core.length_predictor.cli", "train and evaluate length predictors"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="corral", description="corral: LLM inference serving")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name and module_name.startswith(error.name):
                continue
            raise
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub)
        sub.set_defaults(handler=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
