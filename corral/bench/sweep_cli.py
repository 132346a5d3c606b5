"""`corral bench sweep`: `bench serve` at each of several request rates or concurrency limits;
one table, one PNG (throughput-latency curve, goodput against load), one JSON."""

from __future__ import annotations

import argparse

from corral.bench.serve_cli import add_client_arguments


def _floats(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list like 0.5,1,2") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list like 1,4,16") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_client_arguments(parser)
    loads = parser.add_argument_group("sweep")
    loads.add_argument(
        "--request-rates",
        type=_floats,
        default=[],
        help="req/s list; trace arrivals are rescaled to each rate, else Poisson (or gamma)",
    )
    loads.add_argument("--concurrencies", type=_ints, default=[], help="max-concurrency list")
    loads.add_argument(
        "--repeats", type=int, default=1, help="run the sweep N times; pool the records per load"
    )
    loads.add_argument("--plot", default=None, help="PNG file for the sweep figure")


def run(args: argparse.Namespace) -> int:
    from corral.bench.plots import plot_sweep
    from corral.bench.serve_cli import (
        request_options_from_args,
        run_metadata,
        serve_target_from_args,
        write_json,
    )
    from corral.bench.sweep import format_sweep, http_point_runner, pool_repeats, run_sweep
    from corral.core.slo_target import parse_slo
    from corral.reports.html import html_path
    from corral.workloads import build_workload
    from corral.workloads.cli_args import workload_options_from_args

    workload_options = workload_options_from_args(args)
    options = request_options_from_args(args)
    slo = parse_slo(args.slo)
    target = serve_target_from_args(args)
    if not options.model:
        from dataclasses import replace

        from corral.bench.serve import fetch_model_name

        options = replace(options, model=fetch_model_name(target))
    title = f"corral bench sweep: {workload_options.dataset} -> {options.model}"

    def on_point(point) -> None:
        label = f"{point.kind.replace('_', ' ')} {point.value:g}"
        print(point.report.format(f"{title} ({label})"), flush=True)

    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    repeats = [
        run_sweep(
            workload_options,
            target,
            http_point_runner(options, slo),
            request_rates=args.request_rates,
            concurrencies=args.concurrencies,
            on_point=on_point,
        )
        for _ in range(args.repeats)
    ]
    points = pool_repeats(repeats, slo, force_output_len=options.force_output_len)
    if args.repeats > 1:
        print(f"pooled over {args.repeats} repeats:")
    print(format_sweep(points))
    html_out = html_path(args.result_json, args.html_out, args.no_html)
    metadata = {}
    if args.result_json or html_out:
        metadata = run_metadata(args, options, build_workload(workload_options))
    if args.result_json:
        document = dict(metadata)
        pooled = args.repeats > 1  # the records are in "repeats"
        document["points"] = [point.to_dict(with_records=not pooled) for point in points]
        if pooled:
            document["repeats"] = [[point.to_dict() for point in one] for one in repeats]
        write_json(args.result_json, document)
        print(f"wrote {args.result_json}")
    if html_out:
        from corral.reports.bench import write_sweep_html

        print(f"wrote {write_sweep_html(html_out, points, title, metadata)}")
    if args.plot:
        print(f"wrote {plot_sweep(points, args.plot, title)}")
    return 0 if any(point.report.summary.num_completed for point in points) else 1
