"""Command-line flags of `corral simulate`: the deployment (instances, cost model, scheduler)."""

from __future__ import annotations

import argparse

from corral.cluster.routing import ROUTER_POLICIES
from corral.config import SchedulerConfig
from corral.engine.engine_args import (
    add_lora_arguments,
    add_rag_chunk_args,
    add_speculative_arguments,
    scheduler_config_from_args,
)
from corral.sim.cli_feature_args import (
    add_autoscale_arguments,
    add_lora_sim_arguments,
    add_spec_sim_arguments,
    add_structured_sim_arguments,
    add_voting_arguments,
    autoscale_config_from_args,
    lora_sim_options_from_args,
    spec_sim_config_from_args,
    structured_sim_config_from_args,
    voting_from_args,
)
from corral.sim.cluster import RequestHook
from corral.sim.cost.hardware import list_hardware
from corral.sim.deployment import DeploymentOptions
from corral.workloads.spec import Workload


def add_deployment_arguments(parser: argparse.ArgumentParser) -> None:
    defaults, sched = DeploymentOptions(), SchedulerConfig()
    group = parser.add_argument_group("deployment")
    group.add_argument(
        "--cost-model",
        choices=("roofline", "profiled"),
        default=None,
        help="default: profiled with --profile, else roofline",
    )
    group.add_argument("--profile", default=None, help="a profile from `corral simulate profile`")
    group.add_argument(
        "--model",
        default=defaults.model,
        help="model shape for roofline: a known name or a config.json / model dir",
    )
    group.add_argument(
        "--hardware", default=defaults.hardware, help=f"{', '.join(list_hardware())} or a JSON spec"
    )
    group.add_argument("--tp", type=int, default=1, help="tensor-parallel devices per instance")
    group.add_argument(
        "--offload-layers",
        type=int,
        default=0,
        help="weight offloading: N decoder layers stream in each step (as corral serve "
        "--offload-layers); docs/offloading.md",
    )
    group.add_argument(
        "--cpu-offload-gb", type=float, default=0.0, help="offload the fewest layers reaching G GiB"
    )
    group.add_argument(
        "--offload-gb-s",
        type=float,
        default=None,
        help="rate offloaded weights stream in, GB/s (default: the hardware's host-to-device "
        "link; with a profile, give the rate benchmarks/weight_offload.py measures)",
    )
    group.add_argument(
        "--offload-cpu-gb-s",
        type=float,
        default=None,
        help="on a CPU device, the rate its cores map offloaded weights in, GB/s (their time "
        "adds to each step's compute; default: none, a DMA copy)",
    )
    group.add_argument("--dtype-bytes", type=int, default=defaults.dtype_bytes)
    group.add_argument("--step-overhead-ms", type=float, default=None)
    group.add_argument("--num-instances", type=int, default=defaults.num_instances)
    group.add_argument("--num-prefill-instances", type=int, default=0)
    group.add_argument("--num-decode-instances", type=int, default=0)
    group.add_argument("--router", choices=ROUTER_POLICIES.names(), default=defaults.router)
    group.add_argument("--max-num-seqs", type=int, default=sched.max_num_seqs)
    group.add_argument("--max-num-batched-tokens", type=int, default=sched.max_num_batched_tokens)
    group.add_argument("--no-chunked-prefill", action="store_true")
    group.add_argument("--long-prefill-token-threshold", type=int, default=0)
    group.add_argument(
        "--session-kv-ttl-s",
        type=float,
        default=sched.session_kv_ttl_s,
        help="pin a conversation's KV for its next turn for up to this many virtual seconds "
        "(turns of the multi-turn and agent workloads carry their conversation as session id; "
        "corral serve --session-kv-ttl-s)",
    )
    add_rag_chunk_args(group)
    group.add_argument(
        "--session-pause-oracle",
        action="store_true",
        help="each turn announces the exact pause before its conversation's next turn "
        "(session_pause_s; a last turn: none comes), the best a client could say",
    )
    group.add_argument(
        "--no-share-sibling-prompts",
        action="store_true",
        help="the n samples of a request (--samples-per-request) each compute the prompt "
        "(default: one computes its full blocks, the others take them as prefix hits)",
    )
    group.add_argument("--scheduling-policy", default=sched.policy)
    group.add_argument(
        "--kv-reservation",
        default=sched.kv_reservation,
        help="none | max | predicted[:options] (corral/core/reservation.py)",
    )
    group.add_argument(
        "--length-predictor",
        default=None,
        help="a saved length predictor (corral predictor train), applied to each prompt's text",
    )
    group.add_argument(
        "--length-oracle",
        action="store_true",
        help="predict each request's true output length (sjf/srpt/predicted need this or "
        "--length-predictor)",
    )
    group.add_argument(
        "--slo-class",
        action="append",
        default=None,
        metavar="PRIORITY:TARGETS",
        help="SLO target of one priority class for the schedulers' attainment accounting "
        "(--slo is every class's)",
    )
    group.add_argument("--block-size", type=int, default=defaults.block_size)
    group.add_argument("--num-kv-blocks", type=int, default=None, help="default: from memory")
    group.add_argument("--memory-utilization", type=float, default=defaults.memory_utilization)
    group.add_argument("--max-model-len", type=int, default=None)
    group.add_argument("--no-prefix-caching", action="store_true")
    group.add_argument(
        "--kv-window-policy",
        default=None,
        metavar="sink:N,window:W",
        help="as on corral serve: keep only the first N and the last W tokens' KV",
    )
    group.add_argument(
        "--kv-transfer-gb-s", type=float, default=50.0, help="prefill -> decode KV bandwidth, GB/s"
    )
    group.add_argument("--kv-transfer-latency-ms", type=float, default=0.0)
    group.add_argument(
        "--kv-lease-timeout-s",
        type=float,
        default=30.0,
        help="disaggregated: a prefill instance frees lent KV blocks nobody fetched after this "
        "long (virtual; corral serve's --kv-lease-timeout-s)",
    )
    group.add_argument(
        "--rebalance-kv-usage",
        type=float,
        default=None,
        help="live migration: every --rebalance-interval-s the most KV-loaded instance at or "
        "above this fraction moves its largest running request to the least loaded one "
        "(corral router --migration --rebalance-kv-usage)",
    )
    group.add_argument("--rebalance-interval-s", type=float, default=0.5)
    group.add_argument(
        "--request-path-ms",
        type=float,
        default=0.0,
        help="time a request spends outside the engines (client, router, HTTP frontend) before "
        "it reaches one; counted in TTFT and end-to-end latency (measure it: "
        "benchmarks/request_path.py)",
    )
    group.add_argument("--price-per-device-hour", type=float, default=None)
    group.add_argument("--sim-seed", type=int, default=0, help="router randomness")
    group.add_argument("--kv-sample-interval-s", type=float, default=1.0)
    group.add_argument(
        "--dashboard-frames",
        default=None,
        metavar="PATH",
        help="write each instance's /dashboard frames (requests, KV block map, steps, counters) "
        "as JSON lines, every --dashboard-interval-s virtual seconds; replay them with "
        "`corral simulate dashboard PATH`",
    )
    group.add_argument("--dashboard-interval-s", type=float, default=0.5)
    group.add_argument(
        "--check-integrity",
        action="store_true",
        help="check every KV manager after every step (slow)",
    )
    add_speculative_arguments(parser)
    add_spec_sim_arguments(parser)
    add_lora_arguments(parser)
    add_lora_sim_arguments(parser)
    add_autoscale_arguments(parser)
    add_voting_arguments(parser)
    add_structured_sim_arguments(parser)


def deployment_options_from_args(args: argparse.Namespace) -> DeploymentOptions:
    cost_model = args.cost_model or ("profiled" if args.profile else "roofline")
    scheduler = scheduler_config_from_args(args)
    return DeploymentOptions(
        cost_model=cost_model,
        profile_path=args.profile,
        model=args.model,
        hardware=args.hardware,
        tensor_parallel_size=args.tp,
        offload_layers=args.offload_layers,
        cpu_offload_gb=args.cpu_offload_gb,
        offload_bandwidth_bytes_per_s=None
        if args.offload_gb_s is None
        else args.offload_gb_s * 1e9,
        offload_cpu_bytes_per_s=None
        if args.offload_cpu_gb_s is None
        else args.offload_cpu_gb_s * 1e9,
        dtype_bytes=args.dtype_bytes,
        step_overhead_s=None if args.step_overhead_ms is None else args.step_overhead_ms / 1e3,
        num_instances=args.num_instances,
        num_prefill_instances=args.num_prefill_instances,
        num_decode_instances=args.num_decode_instances,
        router=args.router,
        scheduler=scheduler,
        block_size=args.block_size,
        num_blocks=args.num_kv_blocks,
        memory_utilization=args.memory_utilization,
        max_model_len=args.max_model_len,
        enable_prefix_caching=not args.no_prefix_caching,
        kv_window_policy=args.kv_window_policy,
        kv_transfer_bandwidth_bytes_per_s=args.kv_transfer_gb_s * 1e9,
        kv_transfer_latency_s=args.kv_transfer_latency_ms / 1e3,
        kv_lease_timeout_s=args.kv_lease_timeout_s,
        request_path_s=args.request_path_ms / 1e3,
        rebalance_kv_usage=args.rebalance_kv_usage,
        rebalance_interval_s=args.rebalance_interval_s,
        price_per_device_hour=args.price_per_device_hour,
        seed=args.sim_seed,
        kv_sample_interval_s=args.kv_sample_interval_s,
        session_pause_oracle=getattr(args, "session_pause_oracle", False),
        dashboard_interval_s=(
            args.dashboard_interval_s if getattr(args, "dashboard_frames", None) else None
        ),
        check_integrity=args.check_integrity,
        speculation=spec_sim_config_from_args(args),
        lora=lora_sim_options_from_args(args),
        autoscale=autoscale_config_from_args(args),
        voting=voting_from_args(args),
        cold_start_s=getattr(args, "cold_start_s", None),
        autoscale_interval_s=getattr(args, "autoscale_interval_s", 1.0),
        structured=structured_sim_config_from_args(args),
    )


def length_hook_from_args(
    args: argparse.Namespace, workload: Workload, deployment: DeploymentOptions
) -> RequestHook | None:
    """The request hook of --length-predictor / --length-oracle (see corral/sim/lengths.py)."""
    from corral.sim.lengths import length_hook

    return length_hook(workload, deployment.scheduler, args.length_predictor, args.length_oracle)
