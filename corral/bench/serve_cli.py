"""`corral bench serve`: flags and the command."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from corral.bench.payload import ENDPOINT_PATHS, PROMPT_FORMATS, RequestOptions
from corral.bench.serve import ServeTarget
from corral.reports.html import html_path
from corral.workloads.cli_args import add_workload_arguments

API_KEY_ENV = "OPENAI_API_KEY"


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not JSON") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r} is not a JSON object")
    return value


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by `bench serve` and `bench sweep`: server, request shape, outputs."""
    group = parser.add_argument_group("server")
    group.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8000")
    group.add_argument("--endpoint", choices=sorted(ENDPOINT_PATHS), default="completions")
    group.add_argument("--model", default=None, help="model name (default: the server's first)")
    group.add_argument("--api-key", default=None, help=f"bearer key (default: ${API_KEY_ENV})")
    group.add_argument(
        "--prompt-format",
        choices=PROMPT_FORMATS,
        default="auto",
        help="auto: text when the dataset has text, else token ids",
    )
    group.add_argument("--temperature", type=float, default=0.0)
    group.add_argument(
        "--no-force-output-len",
        action="store_true",
        help="do not send ignore_eos (outputs may end early at EOS)",
    )
    group.add_argument(
        "--extra-body", type=_json_object, default={}, help="JSON merged into every request"
    )
    group.add_argument("--request-timeout-s", type=float, default=600.0)
    group.add_argument(
        "--warmup-requests", type=int, default=0, help="sent one by one first, not counted"
    )
    group.add_argument("--no-progress", action="store_true", help="no progress bar")
    group.add_argument("--slo", default=None, help="ttft_ms=...,tpot_ms=...,e2e_ms=...")
    group.add_argument(
        "--send-deadlines",
        action="store_true",
        help="send each request's deadline_s (ttft + tpot x (output tokens - 1) from --slo), "
        "for the edf policy; --num-clients and --num-priorities are sent as user and priority",
    )
    group.add_argument(
        "--send-session-ids",
        action="store_true",
        help="send each turn's conversation as session_id (corral serve --session-kv-ttl-s "
        "keeps a paused conversation's KV for its next turn)",
    )
    group.add_argument(
        "--send-rag-chunks",
        action="store_true",
        help="send each request's retrieved chunks (the rag dataset) as rag_chunks, token ids "
        "(corral serve --rag-chunk-reuse reuses their KV at any position)",
    )
    group.add_argument(
        "--send-session-pauses",
        action="store_true",
        help="with --send-session-ids: announce each turn's pause before the next as "
        "session_pause_s (the workload's think time; a last turn: none comes)",
    )
    group.add_argument(
        "--stop-when-agreed",
        type=int,
        default=None,
        help="with --samples-per-request N: stop a request's samples once this many finished "
        "ones agree on the answer (self-consistency; outputs are then not of forced length)",
    )
    group.add_argument(
        "--answer-pattern",
        default=None,
        help="with --stop-when-agreed: the regex of a sample's answer (default: its last number)",
    )
    group.add_argument("--result-json", default=None, help="write the report and records here")
    add_html_arguments(group)
    add_workload_arguments(parser)


def add_html_arguments(group: argparse._ActionsContainer) -> None:
    """--html-out and --no-html: the self-contained HTML report, beside --result-json."""
    group.add_argument(
        "--html-out",
        default=None,
        help="write the HTML report here (default: beside --result-json, as NAME.html)",
    )
    group.add_argument("--no-html", action="store_true", help="no HTML report")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_client_arguments(parser)
    parser.add_argument(
        "--max-concurrency", type=int, default=None, help="most requests in flight at once"
    )
    parser.add_argument("--plot", default=None, help="write latency_cdf.png, timeline.png here")


def request_options_from_args(args: argparse.Namespace) -> RequestOptions:
    from corral.core.slo_target import parse_slo

    if args.send_deadlines and not args.slo:
        raise ValueError("--send-deadlines needs --slo with ttft_ms and tpot_ms")
    return RequestOptions(
        deadline_slo=parse_slo(args.slo) if args.send_deadlines else None,
        endpoint=args.endpoint,
        model=args.model or "",
        prompt_format=args.prompt_format,
        temperature=args.temperature,
        force_output_len=not args.no_force_output_len,
        extra_body=args.extra_body,
        send_session_ids=getattr(args, "send_session_ids", False),
        send_session_pauses=getattr(args, "send_session_pauses", False),
        send_rag_chunks=getattr(args, "send_rag_chunks", False),
        stop_when_agreed=getattr(args, "stop_when_agreed", None),
        answer_pattern=getattr(args, "answer_pattern", None),
    )


def serve_target_from_args(
    args: argparse.Namespace, max_concurrency: int | None = None
) -> ServeTarget:
    return ServeTarget(
        base_url=args.base_url,
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        max_concurrency=max_concurrency,
        request_timeout_s=args.request_timeout_s,
        num_warmup_requests=args.warmup_requests,
        show_progress=not args.no_progress,
    )


def run_metadata(args: argparse.Namespace, options: RequestOptions, workload) -> dict[str, Any]:
    import corral

    return {
        "tool": "corral bench",
        "corral_version": corral.__version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "base_url": args.base_url,
        "endpoint": options.endpoint,
        "model": options.model,
        "workload": workload.description,
        "arguments": {k: v for k, v in vars(args).items() if k != "api_key" and not callable(v)},
    }


def write_json(path: str, document: dict[str, Any]) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(document, indent=1, default=str))


def run(args: argparse.Namespace) -> int:
    from corral.bench.serve import run_serve_benchmark
    from corral.core.slo_target import parse_slo
    from corral.workloads import build_workload
    from corral.workloads.cli_args import workload_options_from_args

    workload = build_workload(workload_options_from_args(args))
    slo = parse_slo(args.slo)
    target = serve_target_from_args(args, args.max_concurrency)
    report, options = run_serve_benchmark(workload, request_options_from_args(args), target, slo)
    title = f"corral bench serve: {workload.name} -> {options.model}"
    print(report.format(title))
    metadata = run_metadata(args, options, workload)
    if args.result_json:
        write_json(args.result_json, report.to_dict(**metadata))
        print(f"wrote {args.result_json}")
    html_out = html_path(args.result_json, args.html_out, args.no_html)
    if html_out:
        from corral.reports.bench import write_serve_html

        print(f"wrote {write_serve_html(html_out, report, title, metadata)}")
    if args.plot:
        from corral.bench.plots import plot_serve

        for path in plot_serve(report, args.plot, title):
            print(f"wrote {path}")
    return 0 if report.summary.num_completed else 1
