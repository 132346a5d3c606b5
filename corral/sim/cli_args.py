"""Command-line flags of `corral simulate`: the deployment (instances, cost model, scheduler)."""

from __future__ import annotations

import argparse
from dataclasses import replace

from corral.cluster.autoscaling import AutoscalingConfig
from corral.cluster.routing import ROUTER_POLICIES
from corral.config import SchedulerConfig
from corral.engine.engine_args import (
    add_lora_arguments,
    add_rag_chunk_args,
    add_speculative_arguments,
    lora_config_from_args,
    scheduler_config_from_args,
    speculative_config_from_args,
)
from corral.sim.cluster import RequestHook
from corral.sim.cost.hardware import list_hardware
from corral.sim.cost.lora import DEFAULT_SEGMENT_OVERHEAD_S
from corral.sim.deployment import DeploymentOptions
from corral.sim.lora import LoRASimOptions
from corral.sim.spec import SpecSimConfig
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


def add_autoscale_arguments(parser: argparse.ArgumentParser) -> None:
    """The shared autoscaling policy over the simulated instances (docs/simulator.md)."""
    from corral.sim.autoscale_spec import FALLBACK_COLD_START_S, measured_cold_start_s

    measured = measured_cold_start_s()
    default = (
        f"{measured:.2f} s, measured by benchmarks/cold_start.py (docs/figures/cold_start.json)"
        if measured is not None
        else f"{FALLBACK_COLD_START_S:g} s, an assumption (no docs/figures/cold_start.json)"
    )
    group = parser.add_argument_group("autoscaling, simulated (simulate run)")
    group.add_argument(
        "--autoscale",
        default=None,
        metavar="SPEC",
        help="autoscale the instances, e.g. target-ongoing:min=0,max=4,target=8,kv=0.9,"
        "up_delay_s=5,down_delay_s=30 (keys: min, max, initial, target, kv, up_delay_s, "
        "down_delay_s); the cluster starts with min(max, max(min, initial or --num-instances))",
    )
    group.add_argument(
        "--cold-start-s",
        type=float,
        default=None,
        help=f"virtual seconds from starting an instance to its first request (default: {default})",
    )
    group.add_argument(
        "--autoscale-interval-s",
        type=float,
        default=1.0,
        help="virtual seconds between autoscaling decisions (default 1)",
    )


def autoscale_config_from_args(args: argparse.Namespace) -> AutoscalingConfig | None:
    """The --autoscale spec, parsed (None without it); ValueError for a bad one, or for it on a
    subcommand that does not autoscale."""
    spec = getattr(args, "autoscale", None)
    if spec is None:
        return None
    if getattr(args, "sim_command", "run") != "run":
        raise ValueError("--autoscale is for `corral simulate run`")
    return AutoscalingConfig.parse(spec)


def add_lora_sim_arguments(parser: argparse.ArgumentParser) -> None:
    """The workload's adapters and the assumptions of their price (docs/simulator.md)."""
    defaults = LoRASimOptions()
    group = parser.add_argument_group("multi-LoRA, simulated")
    group.add_argument(
        "--lora-num-adapters",
        type=int,
        default=0,
        help="synthetic adapters adapter-0.. the requests use (0: none; turns LoRA on)",
    )
    group.add_argument(
        "--lora-rank",
        type=int,
        default=defaults.rank,
        help=f"their rank, on all 7 target modules (default {defaults.rank})",
    )
    group.add_argument(
        "--lora-distribution",
        default=defaults.distribution,
        help="which adapter a request uses: uniform or zipf:S (adapter i weighs 1/(i+1)^S)",
    )
    group.add_argument(
        "--lora-base-fraction",
        type=float,
        default=defaults.base_fraction,
        help="share of requests (conversations) on the base model (default 0)",
    )
    group.add_argument("--lora-seed", type=int, default=defaults.seed)
    group.add_argument(
        "--lora-segment-overhead-us",
        type=float,
        default=DEFAULT_SEGMENT_OVERHEAD_S * 1e6,
        help="fixed time per adapter segment per step, us (an assumption, default "
        f"{DEFAULT_SEGMENT_OVERHEAD_S * 1e6:g})",
    )
    group.add_argument(
        "--lora-disk-gb-s",
        type=float,
        default=None,
        help="adapter file read rate, GB/s (default: the hardware spec's)",
    )
    group.add_argument(
        "--lora-h2d-gb-s",
        type=float,
        default=None,
        help="adapter copy rate host to device, GB/s (default: the hardware spec's)",
    )


def lora_sim_options_from_args(args: argparse.Namespace) -> LoRASimOptions | None:
    """Multi-LoRA of the flags (None: off, without --lora-num-adapters, --enable-lora or
    --lora-modules)."""
    config = lora_config_from_args(args)
    if args.lora_num_adapters > 0:
        config = replace(config, enable_lora=True)
    if not config.is_enabled:
        return None
    disk, host_to_device = args.lora_disk_gb_s, args.lora_h2d_gb_s
    return LoRASimOptions(
        config=config,
        num_adapters=args.lora_num_adapters,
        rank=args.lora_rank,
        distribution=args.lora_distribution,
        base_fraction=args.lora_base_fraction,
        seed=args.lora_seed,
        segment_overhead_s=args.lora_segment_overhead_us / 1e6,
        disk_read_bandwidth_bytes_per_s=None if disk is None else disk * 1e9,
        host_to_device_bandwidth_bytes_per_s=(
            None if host_to_device is None else host_to_device * 1e9
        ),
    )


def add_spec_sim_arguments(parser: argparse.ArgumentParser) -> None:
    """What stands in for the proposer and the verifier (docs/speculative-sim.md)."""
    group = parser.add_argument_group("speculative decoding, simulated")
    group.add_argument(
        "--spec-acceptance",
        default=None,
        help="acceptance per draft position, conditional on the earlier ones: 0.72 (every "
        "position) or 0.8,0.7,0.6 (the last holds for later ones); default: the method's, "
        "measured on the real engine (draft 0.72)",
    )
    group.add_argument(
        "--spec-draft-profile",
        default=None,
        help="a profile of the draft model (corral simulate profile): prices each draft pass",
    )
    group.add_argument(
        "--spec-draft-cost-ratio",
        type=float,
        default=None,
        help="without --spec-draft-profile, a draft pass costs this times the target's cost "
        "model on the same batch (default 0.38)",
    )
    group.add_argument(
        "--spec-propose-ms-per-step",
        type=float,
        default=None,
        help="proposer time per step that proposes, ms (added to any draft passes)",
    )
    group.add_argument(
        "--spec-propose-ms-per-token",
        type=float,
        default=None,
        help="proposer time per proposed token, ms (ngram, suffix: measured defaults)",
    )
    group.add_argument(
        "--spec-proposal-rate",
        type=float,
        default=None,
        help="the chance that a request asked to propose gets a proposal (ngram, suffix: "
        "measured defaults; draft 1)",
    )


def spec_sim_config_from_args(args: argparse.Namespace) -> SpecSimConfig | None:
    """The simulated speculation of the flags (None without --speculative-method)."""
    from corral.sim.spec import SIMULATED_DRAFT_MODEL, make_spec_sim_config, parse_acceptance

    if args.speculative_method is None:
        return None
    if args.speculative_method == "draft" and not args.speculative_model:
        args = argparse.Namespace(**{**vars(args), "speculative_model": SIMULATED_DRAFT_MODEL})
    draft_cost_model = None
    if args.spec_draft_profile:
        from corral.sim.cost.profiled import ProfiledCostModel

        draft_cost_model = ProfiledCostModel.load(args.spec_draft_profile)
    per_step, per_token = args.spec_propose_ms_per_step, args.spec_propose_ms_per_token
    return make_spec_sim_config(
        speculative_config_from_args(args),
        parse_acceptance(args.spec_acceptance) if args.spec_acceptance else None,
        draft_cost_model=draft_cost_model,
        draft_cost_ratio=args.spec_draft_cost_ratio,
        propose_s_per_step=None if per_step is None else per_step / 1e3,
        propose_s_per_token=None if per_token is None else per_token / 1e3,
        proposal_rate=args.spec_proposal_rate,
    )


def deployment_options_from_args(args: argparse.Namespace) -> DeploymentOptions:
    cost_model = args.cost_model or ("profiled" if args.profile else "roofline")
    scheduler = scheduler_config_from_args(args)
    return DeploymentOptions(
        cost_model=cost_model,
        profile_path=args.profile,
        model=args.model,
        hardware=args.hardware,
        tensor_parallel_size=args.tp,
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
        cold_start_s=getattr(args, "cold_start_s", None),
        autoscale_interval_s=getattr(args, "autoscale_interval_s", 1.0),
    )


def length_hook_from_args(
    args: argparse.Namespace, workload: Workload, deployment: DeploymentOptions
) -> RequestHook | None:
    """The request hook of --length-predictor / --length-oracle (see corral/sim/lengths.py)."""
    from corral.sim.lengths import length_hook

    return length_hook(workload, deployment.scheduler, args.length_predictor, args.length_oracle)
