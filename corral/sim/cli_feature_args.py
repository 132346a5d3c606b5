"""Command-line flags of `corral simulate` for the simulated features: autoscaling,
multi-LoRA, speculative decoding, self-consistency voting, and constrained decoding."""

from __future__ import annotations

import argparse
import math
from dataclasses import replace

from corral.cluster.autoscaling import AutoscalingConfig
from corral.engine.engine_args import (
    lora_config_from_args,
    speculative_config_from_args,
)
from corral.sim.cost.lora import DEFAULT_SEGMENT_OVERHEAD_S
from corral.sim.lora import LoRASimOptions
from corral.sim.spec import SpecSimConfig
from corral.sim.structured import (
    DEFAULT_COMPILE_CACHED_S,
    DEFAULT_COMPILE_COLD_S,
    DEFAULT_MASK_S_PER_ROW,
    StructuredSimConfig,
)
from corral.sim.voting import DEFAULT_ANSWER_ACCURACY, DEFAULT_NUM_WRONG_ANSWERS, SimVoting


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
        "--spec-draft-loop-ms",
        default=None,
        metavar="CALL,PASS",
        help="with --spec-draft-profile: the engine's greedy draft loop at one row, its call "
        "with the first pass and each further pass in ms (benchmarks/spec_sim_k.py measure "
        "reports them); without it every draft pass is priced as a step of the profile",
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
    draft_loop_s = None
    if args.spec_draft_loop_ms:
        parts = [part.strip() for part in args.spec_draft_loop_ms.split(",")]
        try:
            call_ms, pass_ms = (float(part) for part in parts)
        except ValueError:
            raise ValueError(
                f"--spec-draft-loop-ms {args.spec_draft_loop_ms!r}: give CALL,PASS in ms"
            ) from None
        draft_loop_s = (call_ms / 1e3, pass_ms / 1e3)
    return make_spec_sim_config(
        speculative_config_from_args(args),
        parse_acceptance(args.spec_acceptance) if args.spec_acceptance else None,
        draft_cost_model=draft_cost_model,
        draft_cost_ratio=args.spec_draft_cost_ratio,
        draft_loop_s=draft_loop_s,
        propose_s_per_step=None if per_step is None else per_step / 1e3,
        propose_s_per_token=None if per_token is None else per_token / 1e3,
        proposal_rate=args.spec_proposal_rate,
    )


def add_voting_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("self-consistency, simulated (simulate run)")
    group.add_argument(
        "--stop-when-agreed",
        type=int,
        default=None,
        help="with --samples-per-request N: stop a request's samples once this many finished "
        "ones agree (as corral serve's stop_when_agreed); answers are drawn, see below",
    )
    group.add_argument(
        "--answer-accuracy",
        type=float,
        default=DEFAULT_ANSWER_ACCURACY,
        help="the chance a finished sample's drawn answer is the right one",
    )
    group.add_argument(
        "--sample-length-spread",
        type=float,
        default=0.0,
        help="each sample of a request runs round(length x (1 - s x u)) tokens, u uniform in "
        "[0, 1) (0: all its length): chains of thought end at different points",
    )
    group.add_argument(
        "--num-wrong-answers",
        type=int,
        default=DEFAULT_NUM_WRONG_ANSWERS,
        help="the wrong answers a sample draws from, uniformly",
    )


def voting_from_args(args: argparse.Namespace) -> SimVoting | None:
    agreed = getattr(args, "stop_when_agreed", None)
    if agreed is None:
        return None
    return SimVoting(
        agreed, args.answer_accuracy, args.num_wrong_answers, args.sample_length_spread
    )


def add_structured_sim_arguments(parser: argparse.ArgumentParser) -> None:
    """Requests with a grammar: compile wait, mask cost (docs/structured-output-benchmarks.md)."""
    group = parser.add_argument_group("structured output, simulated")
    group.add_argument(
        "--structured-fraction",
        type=float,
        default=None,
        help="share of requests that carry a grammar (JSON schema, regex, forced tool call), "
        "drawn per request with --structured-seed; turns constrained decoding on",
    )
    group.add_argument(
        "--structured-num-grammars",
        type=int,
        default=None,
        help="distinct grammars those requests draw from, uniformly (default 1); each "
        "instance compiles a grammar cold on its first use and hits its cache afterwards",
    )
    group.add_argument(
        "--structured-compile-ms",
        default=None,
        metavar="COLD[,CACHED]",
        help="grammar compile time on the instance's compile thread, cold and on a cache hit "
        f"(default {DEFAULT_COMPILE_COLD_S * 1e3:g},{DEFAULT_COMPILE_CACHED_S * 1e3:g}: the JSON "
        "schema measured; the bounded regex took 114 ms cold); CACHED alone defaults to the "
        "lesser of COLD and the measured cache hit",
    )
    group.add_argument(
        "--structured-mask-us-per-row",
        type=float,
        default=None,
        help="bitmask fill + apply per constrained sampled row per step, us (default "
        f"{DEFAULT_MASK_S_PER_ROW * 1e6:g}: the JSON schema at batch 32; the regex: 35.8)",
    )
    group.add_argument(
        "--structured-mask-us-per-step",
        type=float,
        default=None,
        help="fixed mask cost per step that samples a constrained row, us (default 0)",
    )
    group.add_argument("--structured-seed", type=int, default=None, help="default 0")


def _parse_compile_ms(text: str) -> tuple[float, float]:
    """'COLD' or 'COLD,CACHED' in ms -> (cold, cached) in seconds."""
    parts = text.split(",")
    try:
        values = [float(part) for part in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or not all(math.isfinite(v) and v >= 0 for v in values):
        raise ValueError(
            f"--structured-compile-ms {text!r} is not COLD or COLD,CACHED, milliseconds >= 0"
        )
    cold_s = values[0] / 1e3
    cached_s = values[1] / 1e3 if len(values) == 2 else min(cold_s, DEFAULT_COMPILE_CACHED_S)
    return cold_s, cached_s


def _non_negative_us(flag: str, value: float | None, default_s: float) -> float:
    if value is None:
        return default_s
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{flag} must be a finite number >= 0 (us), got {value!r}")
    return value / 1e6


def structured_sim_config_from_args(args: argparse.Namespace) -> StructuredSimConfig | None:
    """The constrained decoding of the flags (None without --structured-fraction); ValueError,
    naming the flag and the value, for a bad one."""
    fraction = getattr(args, "structured_fraction", None)
    others = {
        "--structured-num-grammars": getattr(args, "structured_num_grammars", None),
        "--structured-compile-ms": getattr(args, "structured_compile_ms", None),
        "--structured-mask-us-per-row": getattr(args, "structured_mask_us_per_row", None),
        "--structured-mask-us-per-step": getattr(args, "structured_mask_us_per_step", None),
        "--structured-seed": getattr(args, "structured_seed", None),
    }
    if fraction is None:
        given = [flag for flag, value in others.items() if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)} needs --structured-fraction")
        return None
    if not (0.0 <= fraction <= 1.0):
        raise ValueError(f"--structured-fraction must be in [0, 1], got {fraction!r}")
    num_grammars = args.structured_num_grammars
    if num_grammars is not None and num_grammars < 1:
        raise ValueError(f"--structured-num-grammars must be >= 1, got {num_grammars}")
    cold_s, cached_s = DEFAULT_COMPILE_COLD_S, DEFAULT_COMPILE_CACHED_S
    if args.structured_compile_ms is not None:
        cold_s, cached_s = _parse_compile_ms(args.structured_compile_ms)
    return StructuredSimConfig(
        fraction=fraction,
        num_grammars=1 if num_grammars is None else num_grammars,
        compile_cold_s=cold_s,
        compile_cached_s=cached_s,
        mask_s_per_row=_non_negative_us(
            "--structured-mask-us-per-row", args.structured_mask_us_per_row, DEFAULT_MASK_S_PER_ROW
        ),
        mask_s_per_step=_non_negative_us(
            "--structured-mask-us-per-step", args.structured_mask_us_per_step, 0.0
        ),
        seed=0 if args.structured_seed is None else args.structured_seed,
    )
