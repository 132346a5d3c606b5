"""`corral simulate`: run | profile | search | hardware.

    corral simulate run --dataset azure-conv --time-scale 0.1 --num-instances 64 \
        --model llama-3.1-8b --hardware h100 --router least-outstanding --slo ttft_ms=500
    corral simulate profile --model DIR --num-threads 1 --out profile.json
    corral simulate run --profile profile.json --dataset azure-conv --length-scale 0.1 ...
    corral simulate search --dataset azure-conv --num-requests 2000 --time-scale 0.1 \
        --slo ttft_ms=1000,tpot_ms=100 --hardware-menu a100,h100 --tp-menu 1,2 \
        --instances-menu 1,2,4,8,16 --plot search.png
    corral simulate hardware [--measure-cpu cpu.json]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from corral.core.slo_target import parse_slo
from corral.reports.html import html_path
from corral.sim.cli_args import (
    add_deployment_arguments,
    deployment_options_from_args,
    length_hook_from_args,
)
from corral.workloads.cli_args import add_workload_arguments, workload_options_from_args

logger = logging.getLogger(__name__)


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list like 1,2,4") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="sim_command", required=True)
    run = commands.add_parser("run", help="simulate a workload on a deployment")
    add_workload_arguments(run)
    add_deployment_arguments(run)
    run.add_argument("--slo", default=None, help="ttft_ms=...,tpot_ms=...,e2e_ms=...")
    run.add_argument("--result-json", default=None, help="write the report (and records) here")
    run.add_argument("--plot", default=None, help="write PNG plots into this directory")
    run.add_argument(
        "--html-out",
        default=None,
        help="write the HTML report here (default: beside --result-json, as NAME.html)",
    )
    run.add_argument("--no-html", action="store_true", help="no HTML report")
    run.set_defaults(sim_handler=_run)

    dashboard = commands.add_parser(
        "dashboard", help="replay the frames of `run --dashboard-frames` on the /dashboard page"
    )
    dashboard.add_argument("frames", help="the JSON-lines file of run --dashboard-frames")
    dashboard.add_argument(
        "--speed", type=float, default=1.0, help="virtual seconds per wall second (default 1)"
    )
    dashboard.add_argument("--loop", action="store_true", help="start over at the end")
    dashboard.add_argument("--host", default="127.0.0.1")
    dashboard.add_argument("--port", type=int, default=8001)
    dashboard.set_defaults(sim_handler=_dashboard)

    profile = commands.add_parser("profile", help="profile the real engine for `profiled`")
    from corral.engine.engine_args import add_engine_arguments

    add_engine_arguments(profile)
    profile.add_argument("--out", required=True, help="profile file to write (JSON)")
    profile.add_argument("--grid", choices=("quick", "standard"), default="standard")
    profile.add_argument("--repeats", type=int, default=None, help="grid passes (default: grid's)")
    profile.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="time steps by wall clock, or by process CPU time (a shared, noisy machine)",
    )
    profile.add_argument(
        "--idle-gap-s",
        type=float,
        default=0.0,
        help="pause this long before every timed step, as a served engine idles between "
        "arrivals (0: back to back)",
    )
    profile.add_argument(
        "--fit-target",
        choices=("mean", "typical"),
        default="mean",
        help="mean: predict each shape's mean step time (latencies add up); typical: its "
        "uncontended time, dropping steps slowed by other processes",
    )
    profile.add_argument(
        "--from-step-log",
        nargs="+",
        default=None,
        metavar="LOG",
        help="fit to these step logs of a real server (corral serve --step-log) instead of "
        "running the grid; the engine flags are then ignored",
    )
    profile.set_defaults(sim_handler=_profile)

    search = commands.add_parser("search", help="cheapest deployment meeting the SLOs")
    add_workload_arguments(search)
    add_deployment_arguments(search)
    search.add_argument("--slo", required=True, help="ttft_ms=...,tpot_ms=...,e2e_ms=...")
    search.add_argument("--slo-attainment", type=float, default=0.9)
    search.add_argument("--hardware-menu", default="a100,h100,h200,l40s,mi300x")
    search.add_argument("--tp-menu", type=_int_list, default=[1, 2, 4, 8])
    search.add_argument("--instances-menu", type=_int_list, default=[1, 2, 4, 8, 16, 32, 64])
    search.add_argument("--plot", default=None, help="PNG of cost against attainment")
    search.add_argument("--result-json", default=None)
    search.set_defaults(sim_handler=_search)

    hardware = commands.add_parser("hardware", help="list hardware specs, or measure this CPU")
    hardware.add_argument("--measure-cpu", default=None, help="write this CPU's spec here")
    hardware.add_argument("--num-threads", type=int, default=0)
    hardware.set_defaults(sim_handler=_hardware)


def run(args: argparse.Namespace) -> int:
    try:
        return args.sim_handler(args)
    except (ValueError, FileNotFoundError) as error:
        logger.error("%s", error)
        return 2


def _dashboard(args: argparse.Namespace) -> int:
    from corral.sim.dashboard_replay import serve_replay

    return serve_replay(args.frames, args.speed, args.loop, args.host, args.port)


def _run(args: argparse.Namespace) -> int:
    from corral.sim.cluster import ClusterSimulator
    from corral.sim.deployment import build_cluster
    from corral.sim.report import build_report, format_report
    from corral.workloads import build_workload

    workload = build_workload(workload_options_from_args(args))
    slo = parse_slo(args.slo)
    deployment = deployment_options_from_args(args)
    hook = length_hook_from_args(args, workload, deployment)
    cluster = build_cluster(deployment)
    result = ClusterSimulator(cluster, workload, hook).run()
    report = build_report(result, slo)
    title = f"corral simulate: {workload.name}"
    print(format_report(report, title))
    cost_model = cluster.instances[0].cost_model.describe()
    if args.result_json:
        document = report.to_dict()
        document["workload"] = workload.description
        document["cost_model"] = cost_model
        speculation = cluster.instances[0].speculation
        if speculation is not None:
            document["speculation"] = speculation.describe()
        document["records"] = [
            {
                "request_id": r.request_id,
                "arrival_time_s": r.arrival_time_s,
                "num_prompt_tokens": r.num_prompt_tokens,
                "num_output_tokens": r.num_output_tokens,
                "ttft_s": r.ttft_s,
                "e2e_s": r.e2e_s,
            }
            for r in result.records
            if r.is_ok
        ]
        Path(args.result_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.result_json).write_text(json.dumps(document, indent=1))
    if getattr(args, "dashboard_frames", None):
        from corral.sim.dashboard_frames import write_frames

        count = write_frames(args.dashboard_frames, result.instances)
        print(f"wrote {count} dashboard frames to {args.dashboard_frames}")
    html_out = html_path(args.result_json, args.html_out, args.no_html)
    if html_out:
        from corral.reports.sim import write_sim_html

        metadata = {"workload": workload.description, "cost model": cost_model}
        print(f"wrote {write_sim_html(html_out, report, result.records, title, metadata)}")
    if args.plot:
        from corral.sim.plots import plot_report

        for path in plot_report(report, result.records, args.plot):
            print(f"wrote {path}")
    return 0


def _profile(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from corral.engine.engine_args import engine_config_from_args
    from corral.sim.profile import QUICK_GRID, ProfileGrid, profile_engine

    if args.from_step_log:
        from corral.sim.profile_log import profile_from_step_logs

        model = profile_from_step_logs(args.from_step_log, fit_target=args.fit_target)
    else:
        grid = QUICK_GRID if args.grid == "quick" else ProfileGrid()
        if args.repeats is not None:
            grid = replace(grid, repeats=args.repeats)
        model = profile_engine(
            engine_config_from_args(args),
            grid,
            progress=lambda message: logger.info(message),
            clock=args.clock,
            idle_gap_s=args.idle_gap_s,
            fit_target=args.fit_target,
        )
    model.save(args.out)
    fit = model.metadata["fit"]
    print(
        f"wrote {args.out}: {fit['num_samples']} steps, fit mean |error| "
        f"{fit['mean_abs_rel_error']:.1%}, p90 {fit['p90_abs_rel_error']:.1%}"
    )
    for name, value in zip(model.features, model.coefficients):
        print(f"  {name:<30}{value:.6g}")
    return 0


def _search(args: argparse.Namespace) -> int:
    from corral.sim.search import format_search, plot_search, search
    from corral.workloads import build_workload

    workload = build_workload(workload_options_from_args(args))
    deployment = deployment_options_from_args(args)
    result = search(
        workload,
        deployment,
        parse_slo(args.slo),
        request_hook=length_hook_from_args(args, workload, deployment),
        hardware_menu=[h.strip() for h in args.hardware_menu.split(",") if h.strip()],
        tp_menu=args.tp_menu,
        instance_menu=args.instances_menu,
        target_attainment=args.slo_attainment,
        progress=lambda p: logger.info(
            "%s tp%d x%d: attainment %.1f%%",
            p.hardware,
            p.tensor_parallel_size,
            p.num_instances,
            100 * p.attainment,
        ),
    )
    print(format_search(result, args.slo_attainment))
    if args.plot:
        plot_search(result, args.slo_attainment, args.plot)
        print(f"wrote {args.plot}")
    if args.result_json:
        Path(args.result_json).write_text(json.dumps(result.to_dict(), indent=1))
    return 0


def _hardware(args: argparse.Namespace) -> int:
    from corral.sim.cost.hardware import list_hardware, load_hardware

    if args.measure_cpu:
        from corral.sim.cost.measure import measure_cpu

        spec = measure_cpu(args.num_threads)
        Path(args.measure_cpu).write_text(json.dumps(spec.to_dict(), indent=1))
        print(f"wrote {args.measure_cpu}")
        return 0
    for name in list_hardware():
        spec = load_hardware(name)
        flops = spec.peak_flops.get("bfloat16", 0) / 1e12
        print(
            f"{name:<10}{spec.name:<24}{flops:>8.1f} TFLOP/s bf16 "
            f"{spec.memory_bandwidth_bytes_per_s / 1e12:>6.2f} TB/s "
            f"{spec.memory_bytes / 1e9:>6.0f} GB  price {spec.price_per_hour} $/h"
        )
    return 0
