"""InstanceSpec and ClusterSpec: what the cluster simulator runs."""

from __future__ import annotations

from dataclasses import dataclass, field

from corral.config import SchedulerConfig
from corral.core.kv_capacity import kv_pool_refusal
from corral.core.kv_window import KVWindow
from corral.sim.autoscale_spec import SimAutoscaleSpec
from corral.sim.cost.base import CostModel
from corral.sim.lora import InstanceLoRA
from corral.sim.lora_workload import AdapterAssignment
from corral.sim.spec import SpecSimConfig
from corral.sim.structured import StructuredSimConfig
from corral.sim.voting import SimVoting

ROLES = ("mixed", "prefill", "decode")


@dataclass(frozen=True, slots=True)
class InstanceSpec:
    """One engine instance: its scheduler and KV pool, its step-time model, and the devices
    it occupies (for cost and energy)."""

    cost_model: CostModel
    num_blocks: int
    max_model_len: int
    block_size: int = 16
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    enable_prefix_caching: bool = True
    # "builtin" hashing is per-process and fast; the simulator is one process.
    prefix_hash: str = "builtin"
    role: str = "mixed"  # mixed | prefill | decode (disaggregation)
    label: str = "instance"
    num_devices: int = 1
    price_per_device_hour: float | None = None
    busy_power_w: float | None = None  # per device, while a step runs
    idle_power_w: float | None = None  # per device, otherwise
    kv_bytes_per_token: int = 0  # for KV transfers between pools
    speculation: SpecSimConfig | None = None  # speculative decoding (None: off)
    lora: InstanceLoRA | None = None  # multi-LoRA (None: off)
    # A bounded attention span (the model's sliding window or --kv-window-policy; None: full
    # attention): the scheduler drops blocks behind it, the cost model prices the keys within.
    kv_window: KVWindow | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"instance role {self.role!r} is not one of {ROLES}")
        # The engine's admission rule, for the longest request the context allows.
        max_live_tokens = None
        if self.kv_window is not None:
            max_live_tokens = self.kv_window.max_live_tokens(
                self.scheduler.max_num_batched_tokens, self.block_size
            )
        refusal = kv_pool_refusal(
            self.max_model_len - 1, 1, self.num_blocks, self.block_size, "none", max_live_tokens
        )
        if refusal is not None:
            raise ValueError(f"max_model_len {self.max_model_len}: {refusal}")
        if self.num_devices < 1:
            raise ValueError(f"num_devices must be >= 1, got {self.num_devices}")


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """Instances behind a router. With prefill and decode instances (and no mixed ones) the
    cluster is disaggregated as corral serve --kv-role is: each request's prompt is computed on
    a prefill instance (max_tokens 1; that token is not the client's), whose KV connector lends
    its full prompt blocks; the decode instance's connector fetches them (blocks x block_size x
    kv_bytes_per_token / bandwidth + latency), admits them as prefix hits, computes the rest of
    the prompt (at least its last token) and generates every output token. A lease nobody
    fetches is freed after kv_lease_timeout_s (corral/sim/kv_transfer_sim.py)."""

    instances: tuple[InstanceSpec, ...]
    router: str = "round-robin"
    seed: int = 0
    kv_transfer_bandwidth_bytes_per_s: float = 50e9
    kv_transfer_latency_s: float = 0.0
    kv_lease_timeout_s: float = 30.0  # KVTransferConfig.lease_timeout_s (virtual seconds)
    # Instances record their KV usage at most this often (virtual seconds).
    kv_sample_interval_s: float = 1.0
    # Instances take a dashboard frame at most this often (virtual seconds; None: no frames).
    dashboard_interval_s: float | None = None
    # Each turn announces the pause before its conversation's next turn exactly (its
    # session_pause_s; a last turn announces none will come): the best a client could say.
    session_pause_oracle: bool = False
    # Self-consistency: stop a request's samples once enough agree (None: every sample runs).
    voting: SimVoting | None = None
    # Check every KV manager's (and adapter residency's) integrity after every step (slow:
    # tests, debugging).
    check_integrity: bool = False
    # Which LoRA adapter each request uses (None: every request uses the base model).
    adapter_assignment: AdapterAssignment | None = None
    # Autoscaling (None: every instance serves throughout). Then instances has one slot per
    # max_replicas, of mixed instances (corral/sim/autoscale.py).
    autoscale: SimAutoscaleSpec | None = None
    # The request path outside the engines (client, router, HTTP frontend, tokenization): a
    # request reaches its instance this long after it arrives; it counts in TTFT and end-to-end
    # latency, not between tokens. Measure it on the real stack (benchmarks/request_path.py).
    request_path_s: float = 0.0
    # Live migration (corral/sim/migration_sim.py; None: off): every rebalance_interval_s the
    # most KV-loaded instance at or above rebalance_kv_usage moves its largest request to the
    # least loaded one, rebalance_min_gap below it, as `corral router --rebalance-kv-usage`.
    rebalance_kv_usage: float | None = None
    rebalance_interval_s: float = 0.5
    rebalance_min_gap: float = 0.2
    # Constrained decoding (corral/sim/structured.py; None: no request carries a grammar): a
    # share of requests wait for their grammar's compile before the scheduler sees them, and
    # each step pays for their masks.
    structured: StructuredSimConfig | None = None

    def __post_init__(self) -> None:
        if not self.instances:
            raise ValueError("a cluster needs at least one instance")
        if self.rebalance_kv_usage is not None:
            if not 0 < self.rebalance_kv_usage <= 1:
                raise ValueError(
                    f"rebalance_kv_usage must be in (0, 1], got {self.rebalance_kv_usage}"
                )
            if not self.rebalance_interval_s > 0:
                raise ValueError("rebalance_interval_s must be > 0")
            if self.autoscale is not None:
                raise ValueError("rebalancing and autoscaling cannot be combined (yet)")
        roles = {spec.role for spec in self.instances}
        if roles & {"prefill", "decode"} and roles != {"prefill", "decode"}:
            raise ValueError(
                f"a disaggregated cluster needs prefill and decode instances only, got {roles}"
            )
        if not self.kv_transfer_bandwidth_bytes_per_s > 0:
            raise ValueError("kv_transfer_bandwidth_bytes_per_s must be > 0")
        if not self.kv_lease_timeout_s > 0:
            raise ValueError(f"kv_lease_timeout_s must be > 0, got {self.kv_lease_timeout_s}")
        if not self.kv_sample_interval_s > 0:
            raise ValueError("kv_sample_interval_s must be > 0")
        if self.dashboard_interval_s is not None and not self.dashboard_interval_s > 0:
            raise ValueError(f"dashboard_interval_s must be > 0, got {self.dashboard_interval_s}")
        if not self.request_path_s >= 0:
            raise ValueError(f"request_path_s must be >= 0, got {self.request_path_s}")
        if self.adapter_assignment is not None and any(s.lora is None for s in self.instances):
            raise ValueError("requests with LoRA adapters need every instance to run LoRA")
        if self.autoscale is not None:
            if self.is_disaggregated:
                raise ValueError("autoscaling covers clusters of mixed instances only")
            max_replicas = self.autoscale.config.max_replicas
            if len(self.instances) != max_replicas:
                raise ValueError(
                    f"an autoscaled cluster needs one instance per max_replicas ({max_replicas}), "
                    f"got {len(self.instances)}"
                )

    @property
    def is_disaggregated(self) -> bool:
        return self.instances[0].role != "mixed"
