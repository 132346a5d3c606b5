"""DeploymentOptions -> ClusterSpec: cost model, KV pool size, devices, price and power."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from corral.cluster.autoscaling import AutoscalingConfig
from corral.config import SchedulerConfig
from corral.core.kv_window import resolve_kv_window
from corral.model.arch import ModelArch
from corral.sim.autoscale_spec import SimAutoscaleSpec, default_cold_start_s
from corral.sim.config import ClusterSpec, InstanceSpec
from corral.sim.cost import CostModel, CostModelOptions, make_cost_model
from corral.sim.cost.adapter_loads import AdapterLoadCost
from corral.sim.cost.hardware import (
    DEFAULT_DISK_READ_BANDWIDTH_BYTES_PER_S,
    DEFAULT_HOST_TO_DEVICE_BANDWIDTH_BYTES_PER_S,
    HardwareSpec,
    load_hardware,
)
from corral.sim.cost.offload import OffloadedWeightsCost, OffloadPlan
from corral.sim.cost.profiled import ProfiledCostModel
from corral.sim.lora import LoRASimOptions, build_lora
from corral.sim.model_shapes import load_model_shape
from corral.sim.spec import SpecSimConfig
from corral.sim.structured import StructuredSimConfig
from corral.sim.voting import SimVoting


@dataclass(frozen=True, slots=True)
class DeploymentOptions:
    """How the simulated cluster is built. With num_prefill_instances and num_decode_instances
    both > 0 the cluster is disaggregated (num_instances is then ignored)."""

    cost_model: str = "roofline"
    profile_path: str | None = None
    model: str = "llama-3.1-8b"
    hardware: str = "h100"
    tensor_parallel_size: int = 1
    dtype_bytes: int = 2
    step_overhead_s: float | None = None
    num_instances: int = 1
    num_prefill_instances: int = 0
    num_decode_instances: int = 0
    router: str = "least-outstanding"
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    block_size: int = 16
    num_blocks: int | None = None
    memory_utilization: float = 0.9
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    kv_window_policy: str | None = None  # CacheConfig.kv_window_policy
    kv_transfer_bandwidth_bytes_per_s: float = 50e9
    kv_transfer_latency_s: float = 0.0
    kv_lease_timeout_s: float = 30.0
    request_path_s: float = 0.0  # ClusterSpec.request_path_s
    rebalance_kv_usage: float | None = None  # ClusterSpec.rebalance_kv_usage (live migration)
    rebalance_interval_s: float = 0.5
    price_per_device_hour: float | None = None
    seed: int = 0
    kv_sample_interval_s: float = 1.0
    dashboard_interval_s: float | None = None  # ClusterSpec.dashboard_interval_s
    session_pause_oracle: bool = False  # ClusterSpec.session_pause_oracle
    voting: SimVoting | None = None  # ClusterSpec.voting
    check_integrity: bool = False
    # Speculative decoding (corral/sim/spec.py; None: off).
    speculation: SpecSimConfig | None = None
    # Multi-LoRA: adapter slots and admission, the workload's adapters (corral/sim/lora.py).
    lora: LoRASimOptions | None = None
    # Autoscaling (None: num_instances serve throughout). The cluster then starts with
    # autoscale.initial_count(num_instances) instances; a started one serves after cold_start_s
    # (None: the measured default, corral/sim/autoscale_spec.py); decisions every
    # autoscale_interval_s (virtual).
    autoscale: AutoscalingConfig | None = None
    cold_start_s: float | None = None
    autoscale_interval_s: float = 1.0
    # Weight offloading (corral/sim/cost/offload.py): offload_layers decoder layers, or the
    # fewest reaching cpu_offload_gb GiB, streamed in each step at offload_bandwidth (None: the
    # hardware's host-to-device link; a profiled CPU engine needs it given).
    offload_layers: int = 0
    cpu_offload_gb: float = 0.0
    offload_bandwidth_bytes_per_s: float | None = None
    offload_cpu_bytes_per_s: float | None = None  # CPU devices: the page-in rate (None: DMA)
    # Constrained decoding: a share of requests carry a grammar (ClusterSpec.structured).
    structured: StructuredSimConfig | None = None

    def __post_init__(self) -> None:
        if self.num_instances < 1:
            raise ValueError(f"num_instances must be >= 1, got {self.num_instances}")
        if (self.num_prefill_instances > 0) != (self.num_decode_instances > 0):
            raise ValueError(
                "disaggregation needs both --num-prefill-instances and --num-decode-instances"
            )
        if not 0 < self.memory_utilization <= 1:
            raise ValueError(f"memory_utilization must be in (0, 1], got {self.memory_utilization}")

    def with_changes(self, **changes: object) -> DeploymentOptions:
        return replace(self, **changes)  # type: ignore[arg-type]


def kv_blocks_for(arch: ModelArch, hardware: HardwareSpec, options: DeploymentOptions) -> int:
    """Blocks that fit in tp devices' memory x utilization after the weights (KV heads are
    replicated when tp exceeds them; offloaded layers leave their memory less two buffers)."""
    tp = options.tensor_parallel_size
    memory = tp * hardware.memory_bytes * options.memory_utilization
    weights = (
        arch.num_params() * options.dtype_bytes - _offload_plan(options, arch).device_bytes_freed
    )
    replication = max(1, tp // arch.num_kv_heads)
    bytes_per_block = (
        arch.kv_bytes_per_token(options.dtype_bytes) * replication * options.block_size
    )
    num_blocks = int((memory - weights) // bytes_per_block)
    if num_blocks < 1:
        raise ValueError(
            f"{arch.num_params() / 1e9:.1f}B parameters ({weights / 1e9:.1f} GB) leave no KV "
            f"memory on {tp} x {hardware.name} at utilization {options.memory_utilization}"
        )
    return num_blocks


def _offload_plan(options: DeploymentOptions, arch: ModelArch | None) -> OffloadPlan:
    if not (options.offload_layers or options.cpu_offload_gb):
        return OffloadPlan((), 0, 0)
    if arch is None:
        raise ValueError("weight offloading needs the model's shape (the profile names none)")
    return OffloadPlan.for_arch(
        arch,
        options.dtype_bytes,
        options.offload_layers,
        options.cpu_offload_gb,
        options.tensor_parallel_size,
    )


def _with_offloading(options: DeploymentOptions, fields: dict, arch: ModelArch | None) -> None:
    """Wrap the instance's cost model in OffloadedWeightsCost when layers are offloaded."""
    plan = _offload_plan(options, arch)
    if not plan.layer_ids:
        return
    bandwidth = options.offload_bandwidth_bytes_per_s
    if bandwidth is None:
        if options.cost_model != "roofline":
            raise ValueError(
                "weight offloading with a profiled cost model needs --offload-gb-s (the rate "
                "benchmarks/weight_offload.py measures)"
            )
        bandwidth = load_hardware(options.hardware).host_to_device_bandwidth_bytes_per_s
    fields["cost_model"] = OffloadedWeightsCost(
        fields["cost_model"], plan.offloaded_bytes, bandwidth, options.offload_cpu_bytes_per_s
    )


def _profiled_instance(options: DeploymentOptions) -> dict:
    if not options.profile_path:
        raise ValueError("the profiled cost model needs --profile PATH")
    model = ProfiledCostModel.load(options.profile_path)
    engine = model.metadata.get("engine", {})
    arch_fields = model.metadata.get("arch")
    kv_bytes = 0
    if arch_fields:
        arch = ModelArch(**{**arch_fields, "eos_token_ids": tuple(arch_fields["eos_token_ids"])})
        kv_bytes = arch.kv_bytes_per_token(int(engine.get("dtype_bytes", options.dtype_bytes)))
    num_blocks = options.num_blocks or engine.get("num_blocks")
    max_model_len = options.max_model_len or engine.get("max_model_len")
    if not num_blocks or not max_model_len:
        raise ValueError(
            "the profile names no KV pool size; pass --num-kv-blocks and --max-model-len"
        )
    return dict(
        cost_model=model,
        num_blocks=int(num_blocks),
        max_model_len=int(max_model_len),
        label=str(engine.get("label", "profiled")),
        price_per_device_hour=options.price_per_device_hour,
        kv_bytes_per_token=kv_bytes,
        kv_window=resolve_kv_window(
            arch.uniform_sliding_window if arch_fields else None, options.kv_window_policy
        ),
    )


def _profiled_adapter_loads(model: ProfiledCostModel, segment_overhead_s: float) -> AdapterLoadCost:
    """A profile names no host link: on a CPU device an adapter load is a host memory copy
    (read and write) at the bandwidth the fit implies (ProfiledCostModel.lora_cost); on an
    accelerator, the default PCIe 4.0 rate. Disk reads at the default rate."""
    host_to_device = DEFAULT_HOST_TO_DEVICE_BANDWIDTH_BYTES_PER_S
    if str(model.metadata.get("engine", {}).get("device", "")).startswith("cpu"):
        host_to_device = model.lora_cost(segment_overhead_s).bytes_per_s / 2
    return AdapterLoadCost(DEFAULT_DISK_READ_BANDWIDTH_BYTES_PER_S, host_to_device)


def _default_adapter_loads(options: DeploymentOptions, cost_model: CostModel) -> AdapterLoadCost:
    if isinstance(cost_model, ProfiledCostModel):
        assert options.lora is not None
        return _profiled_adapter_loads(cost_model, options.lora.segment_overhead_s)
    return AdapterLoadCost.from_hardware(
        load_hardware(options.hardware), options.tensor_parallel_size
    )


def _roofline_instance(options: DeploymentOptions) -> dict:
    arch = load_model_shape(options.model)
    hardware = load_hardware(options.hardware)
    cost_model = make_cost_model(
        "roofline",
        CostModelOptions(
            arch=arch,
            hardware=hardware,
            tensor_parallel_size=options.tensor_parallel_size,
            dtype_bytes=options.dtype_bytes,
            step_overhead_s=options.step_overhead_s,
        ),
    )
    max_model_len = options.max_model_len or min(arch.max_position_embeddings, 32768)
    tp = options.tensor_parallel_size
    return dict(
        cost_model=cost_model,
        num_blocks=options.num_blocks or kv_blocks_for(arch, hardware, options),
        max_model_len=max_model_len,
        label=f"{hardware.name.split('-')[0]}x{tp}",
        num_devices=tp,
        price_per_device_hour=(
            options.price_per_device_hour
            if options.price_per_device_hour is not None
            else hardware.price_per_hour
        ),
        busy_power_w=hardware.max_power_w,
        idle_power_w=hardware.idle_power_w,
        kv_bytes_per_token=arch.kv_bytes_per_token(options.dtype_bytes),
        kv_window=resolve_kv_window(arch.uniform_sliding_window, options.kv_window_policy),
    )


def _instance_arch(options: DeploymentOptions, cost_model: CostModel) -> ModelArch | None:
    if isinstance(cost_model, ProfiledCostModel):
        return cost_model.model_arch
    return load_model_shape(options.model)


# Per cost model: the instance fields it determines (pool size, devices, price, power).
_INSTANCE_FIELDS = {"profiled": _profiled_instance, "roofline": _roofline_instance}


def build_cluster(options: DeploymentOptions) -> ClusterSpec:
    """The ClusterSpec for these options (ValueError for impossible ones)."""
    builder = _INSTANCE_FIELDS.get(options.cost_model)
    if builder is None:
        known = ", ".join(sorted(_INSTANCE_FIELDS))
        raise ValueError(f"unknown cost model {options.cost_model!r}; known: {known}")
    fields = builder(options)
    lora = assignment = None
    if options.lora is not None:
        cost_model = fields["cost_model"]
        default_loads = _default_adapter_loads(options, cost_model)
        lora, assignment = build_lora(options.lora, cost_model, default_loads)
    _with_offloading(options, fields, _instance_arch(options, fields["cost_model"]))
    common = dict(
        block_size=options.block_size,
        scheduler=options.scheduler,
        enable_prefix_caching=options.enable_prefix_caching,
        speculation=options.speculation,
        lora=lora,
        **fields,
    )
    autoscale = None
    if options.autoscale is not None:
        if options.num_prefill_instances:
            raise ValueError("--autoscale covers clusters of mixed instances only")
        config = options.autoscale
        autoscale = SimAutoscaleSpec(
            config,
            config.initial_count(options.num_instances),
            default_cold_start_s() if options.cold_start_s is None else options.cold_start_s,
            options.autoscale_interval_s,
        )
        instances = tuple([InstanceSpec(**common)] * config.max_replicas)
    elif options.num_prefill_instances:
        instances = tuple(
            [InstanceSpec(role="prefill", **common)] * options.num_prefill_instances
            + [InstanceSpec(role="decode", **common)] * options.num_decode_instances
        )
    else:
        instances = tuple([InstanceSpec(**common)] * options.num_instances)
    return ClusterSpec(
        instances=instances,
        router=options.router,
        seed=options.seed,
        kv_transfer_bandwidth_bytes_per_s=options.kv_transfer_bandwidth_bytes_per_s,
        kv_transfer_latency_s=options.kv_transfer_latency_s,
        kv_lease_timeout_s=options.kv_lease_timeout_s,
        kv_sample_interval_s=options.kv_sample_interval_s,
        dashboard_interval_s=options.dashboard_interval_s,
        session_pause_oracle=options.session_pause_oracle,
        voting=options.voting,
        check_integrity=options.check_integrity,
        adapter_assignment=assignment,
        autoscale=autoscale,
        request_path_s=options.request_path_s,
        rebalance_kv_usage=options.rebalance_kv_usage,
        rebalance_interval_s=options.rebalance_interval_s,
        structured=options.structured,
    )
