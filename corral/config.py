"""One frozen dataclass per layer of the engine: cache, scheduler, model, engine."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields

from corral.core.kv_window import parse_kv_window_policy
from corral.memory_budget import parse_memory_budget
from corral.parallel_config import check_tensor_parallel
from corral.speculative_config import SpeculativeConfig


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """Paged KV cache: block size, pool size, prefix reuse."""

    block_size: int = 16
    # A fraction in (0, 1] of the memory free after loading weights, or bytes (> 1). None: the
    # device default (CPU 0.2, CUDA 0.9).
    kv_cache_memory: str | float | None = None
    # Overrides the memory budget with an exact block count (tests, the simulator).
    num_blocks: int | None = None
    enable_prefix_caching: bool = True
    # "sha256" (collision-safe, stable across processes) or "builtin" (faster, per-process).
    prefix_hash: str = "sha256"
    # Stored KV values: "auto" (the model dtype), "int8" or "fp8" (per-token-per-head scales).
    kv_cache_dtype: str = "auto"
    # Host-memory tier below the device pool (bytes or a fraction of free memory; None: none).
    host_cache_memory: str | float | None = None
    # Disk tier below the host tier: a directory (None: none) and its byte budget.
    disk_cache_dir: str | None = None
    disk_cache_max_bytes: str | float = "10GiB"
    # The disk tier's directory is shared with other engines (of the same model and KV layout):
    # a block another engine wrote there is a prefix hit here too (the disk tier as a KV
    # connector between instances; docs/disaggregation.md).
    disk_cache_shared: bool = False
    # "sink:N,window:W": keep the first N and the last W tokens' KV (StreamingLLM) so that
    # generation runs past the model's context (corral/core/kv_window.py). None: full attention.
    kv_window_policy: str | None = None

    def __post_init__(self) -> None:
        parse_kv_window_policy(self.kv_window_policy)
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two >= 1, got {self.block_size}")
        if self.num_blocks is not None and self.num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {self.num_blocks}")
        if self.kv_cache_memory is not None:
            parse_memory_budget(self.kv_cache_memory)
        if self.prefix_hash not in ("sha256", "builtin"):
            raise ValueError(f"prefix_hash must be 'sha256' or 'builtin', got {self.prefix_hash!r}")
        if self.kv_cache_dtype not in ("auto", "int8", "fp8", "fp8_e4m3"):
            raise ValueError(
                f"kv_cache_dtype must be auto, int8 or fp8, got {self.kv_cache_dtype!r}"
            )
        if self.host_cache_memory is not None:
            parse_memory_budget(self.host_cache_memory)
        if self.disk_cache_shared and self.disk_cache_dir is None:
            raise ValueError("disk_cache_shared needs a disk tier (disk_cache_dir)")
        if self.disk_cache_dir is not None:
            parse_memory_budget(self.disk_cache_max_bytes)
            if self.host_cache_memory is None:
                raise ValueError("disk_cache_dir needs a host tier too (host_cache_memory)")
            if self.prefix_hash != "sha256":
                raise ValueError("the disk KV tier needs prefix_hash='sha256' (stable hashes)")


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """Token-budget continuous batching."""

    max_num_seqs: int = 128
    max_num_batched_tokens: int = 2048
    enable_chunked_prefill: bool = True
    # Cap on the tokens one prefill may take in a step (0: no cap beyond the budget), so that long
    # prompts do not stall the decodes batched with them.
    long_prefill_token_threshold: int = 0
    policy: str = "fcfs"
    # KV reserved at admission: "none" (on demand), "max" (worst case), "predicted" (S3); a spec
    # string with options, e.g. "predicted:headroom=0.2" (corral/core/reservation.py).
    kv_reservation: str = "none"
    # A saved output-length predictor (corral predictor train); sets
    # Request.predicted_num_output_tokens at admission for sjf/srpt and kv_reservation.
    length_predictor: str | None = None
    # What preemption does to the victim's KV: "recompute" (drop it) or "swap" (host tier).
    preemption_mode: str = "recompute"
    # SLO targets for attainment accounting (corral/core/slo.py): a default for every class and
    # per-class ones "PRIORITY:ttft_ms=..,tpot_ms=..,e2e_ms=.." (corral/core/slo_target.py).
    slo: str | None = None
    slo_classes: tuple[str, ...] = ()
    # The samples of one n > 1 request compute the prompt once: the others wait for its full
    # blocks and take them as prefix hits (needs prefix caching; corral/core/sibling_admission.py).
    share_sibling_prompts: bool = True
    # Keep a finished turn's KV for its session's next turn this long (corral/core/session_pins.py).
    session_kv_ttl_s: float = 0.0
    # Reuse retrieved chunks' KV at any position, recomputing this share of each chunk's tokens
    # (approximate, so off by default; corral/core/chunk_reuse.py, docs/rag.md).
    rag_chunk_reuse: bool = False
    rag_recompute_ratio: float = 0.15

    def __post_init__(self) -> None:
        if not 0.0 <= self.rag_recompute_ratio <= 1.0:
            raise ValueError(f"rag_recompute_ratio must be in [0, 1]: {self.rag_recompute_ratio}")
        if not 0 <= self.session_kv_ttl_s < float("inf"):
            raise ValueError(f"session_kv_ttl_s must be >= 0 and finite: {self.session_kv_ttl_s}")
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens < 1:
            raise ValueError(
                f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}"
            )
        if self.preemption_mode not in ("recompute", "swap"):
            raise ValueError(
                f"preemption_mode must be 'recompute' or 'swap', got {self.preemption_mode!r}"
            )
        from corral.core.slo_target import parse_slo_classes

        parse_slo_classes(self.slo, self.slo_classes)  # ValueError names a bad item
        if self.long_prefill_token_threshold < 0:
            raise ValueError(
                "long_prefill_token_threshold must be >= 0, got "
                f"{self.long_prefill_token_threshold}"
            )


# --cpu-isa caps (corral/model/cpu_features.py, docs/performance.md): the instruction sets corral,
# PyTorch and oneDNN may use on this CPU.
CPU_ISA_CAPS = ("native", "avx512_bf16", "avx2")

# --quantization values (docs/quantization.md).
QUANTIZATION_METHODS = ("none", "int8", "int8-all")


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Which model to load and how: a local Hugging Face directory, dtype, device, context."""

    model: str | None = None  # None: the bundled demo model
    tokenizer: str | None = None  # defaults to the model directory
    dtype: str = "auto"  # auto | bfloat16 | float16 | float32
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    max_model_len: int | None = None  # None: the model's own context length
    seed: int = 0
    # Number of CPU threads for torch (0: leave torch's default).
    num_threads: int = 0
    # Instruction-set cap on CPU (CPU_ISA_CAPS; None: CORRAL_CPU_ISA's, else native): a machine
    # with AMX measures the AVX-512 bf16 path of a Zen 4, or the AVX2 path of older CPUs.
    cpu_isa: str | None = None
    # On the CPU, the weights and the KV pool on 2 MiB pages where the kernel's transparent huge
    # pages allow it (corral/model/huge_pages.py).
    huge_pages: bool = True
    # Weight quantization computed at load: None/"none", "int8" (the dense layers' linears) or
    # "int8-all" (the LM head too) (docs/quantization.md).
    quantization: str | None = None
    tensor_parallel_size: int = 1  # ranks (processes) the weights and KV heads are split over
    # MoE models over tensor_parallel_size ranks: each rank holds whole experts (a range of
    # them) instead of a slice of every expert (docs/moe.md).
    enable_expert_parallel: bool = False
    # Weight offloading (docs/placement.md): offload_layers decoder layers, or the fewest whose
    # weights reach cpu_offload_gb GiB, live off the compute device and stream in as they run,
    # to "host" memory (CUDA) or "disk" (memory-mapped; the default on CPU) under offload_dir.
    offload_layers: int = 0
    cpu_offload_gb: float = 0.0
    offload_to: str = "auto"  # auto | host | disk
    offload_dir: str | None = None  # None: the system's temporary directory

    def __post_init__(self) -> None:
        from corral.model.offload_plan import check_offload_settings

        check_offload_settings(
            self.offload_layers, self.cpu_offload_gb, self.offload_to, self.tensor_parallel_size
        )
        if self.dtype not in ("auto", "bfloat16", "bf16", "float16", "fp16", "float32", "fp32"):
            raise ValueError(f"dtype {self.dtype!r} is not one of auto, bfloat16, float16, float32")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"max_model_len must be >= 2, got {self.max_model_len}")
        if self.cpu_isa is not None and self.cpu_isa not in CPU_ISA_CAPS:
            caps = ", ".join(CPU_ISA_CAPS)
            raise ValueError(f"cpu_isa {self.cpu_isa!r} is not one of {caps}")
        if self.quantization not in (None, *QUANTIZATION_METHODS):
            methods = ", ".join(QUANTIZATION_METHODS)
            raise ValueError(f"quantization {self.quantization!r} is not one of {methods}")


@dataclass(frozen=True, slots=True)
class LoRAConfig:
    """Multi-LoRA serving (corral/lora): compute slots, host cache, rank limit, admission."""

    enable_lora: bool = False
    max_loras: int = 4  # adapters resident in the compute pool at once (its slots)
    max_lora_rank: int = 16
    max_cpu_loras: int | None = None  # host-memory LRU cache of adapters; None: 4 x max_loras
    # Admission may start requests of resident adapters ahead of one waiting for a slot, at
    # most this many times in a row for that request (then it waits for a slot to free).
    max_num_lora_bypasses: int = 32
    # Adapters served from the start: (name, PEFT directory) pairs (--lora-modules name=path).
    lora_modules: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        for name in ("max_loras", "max_lora_rank"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            raise ValueError(
                f"max_cpu_loras ({self.max_cpu_loras}) must be >= max_loras ({self.max_loras})"
            )
        if self.max_num_lora_bypasses < 0:
            raise ValueError(
                f"max_num_lora_bypasses must be >= 0, got {self.max_num_lora_bypasses}"
            )

    @property
    def is_enabled(self) -> bool:
        return self.enable_lora or bool(self.lora_modules)

    @property
    def num_cpu_loras(self) -> int:
        return self.max_cpu_loras if self.max_cpu_loras is not None else 4 * self.max_loras


@dataclass(frozen=True, slots=True)
class KVEventsConfig:
    """KV cache events for routers (vLLM's --kv-events-config, same JSON keys): a ZMQ PUB socket
    streams the prefix cache's stored/removed blocks, a ROUTER socket replays recent batches and
    answers a snapshot request (docs/server.md, corral/serve/kv_events_publisher.py)."""

    enable_kv_cache_events: bool = False
    publisher: str | None = None  # "zmq" or "null"; None: zmq when enabled
    endpoint: str = "tcp://*:5557"  # bound when it has * (or is ipc/inproc), else connected
    replay_endpoint: str | None = None  # bound; None: no replay, no snapshot
    buffer_steps: int = 10_000  # batches kept for replay
    hwm: int = 100_000  # the PUB socket's high-water mark
    max_queue_size: int = 100_000  # batches waiting for the publisher thread
    topic: str = ""
    # corral's own keys: block hashes as vLLM's default uint64 ("int") or the sha256 digest
    # ("bytes"); events as tagged arrays (vLLM before its map switch) or tagged maps ("map").
    block_hash_format: str = "int"
    event_encoding: str = "array"

    def __post_init__(self) -> None:
        if self.publisher is None:
            object.__setattr__(self, "publisher", "zmq" if self.enable_kv_cache_events else "null")
        if self.publisher not in ("zmq", "null"):
            raise ValueError(f"kv events publisher must be 'zmq' or 'null', got {self.publisher!r}")
        if self.block_hash_format not in ("int", "bytes"):
            raise ValueError(
                f"kv events block_hash_format must be 'int' or 'bytes', got "
                f"{self.block_hash_format!r}"
            )
        if self.event_encoding not in ("array", "map"):
            raise ValueError(
                f"kv events event_encoding must be 'array' or 'map', got {self.event_encoding!r}"
            )
        for name in ("buffer_steps", "hwm", "max_queue_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"kv events {name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def from_json(cls, text: str) -> KVEventsConfig:
        """Parse --kv-events-config; ValueError names a malformed text or an unknown key."""
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"--kv-events-config is not JSON ({error}): {text!r}") from None
        if not isinstance(values, dict):
            raise ValueError(f"--kv-events-config must be a JSON object, got {text!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"--kv-events-config: unknown keys {unknown}; known: {sorted(known)}")
        try:
            return cls(**values)
        except TypeError as error:  # a value of the wrong type
            raise ValueError(f"--kv-events-config {text!r}: {error}") from None

    @property
    def is_enabled(self) -> bool:
        return self.enable_kv_cache_events and self.publisher == "zmq"


KV_ROLES = ("prefill", "decode", "both")


@dataclass(frozen=True, slots=True)
class KVTransferConfig:
    """Prefill/decode disaggregation (corral/kv_transfer): role None is off. A prefill (or both)
    engine lends finished prompts' KV blocks from a transfer server on host:port (port 0: a free
    one); a decode (or both) engine fetches them. lease_timeout_s: how long a lent block waits
    for its decode engine before it is freed."""

    role: str | None = None
    host: str = "127.0.0.1"
    port: int = 0
    transport: str = "tcp"
    lease_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.role is not None and self.role not in KV_ROLES:
            raise ValueError(f"kv role must be one of {KV_ROLES}, got {self.role!r}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"kv transfer port must be in 0..65535, got {self.port}")
        if self.transport not in ("tcp", "shm"):
            raise ValueError(f"kv transfer transport must be tcp or shm, got {self.transport!r}")
        if not self.lease_timeout_s > 0:
            raise ValueError(f"kv lease timeout must be > 0 s, got {self.lease_timeout_s}")

    @property
    def is_enabled(self) -> bool:
        return self.role is not None

    @property
    def lends(self) -> bool:
        return self.role in ("prefill", "both")

    @property
    def fetches(self) -> bool:
        return self.role in ("decode", "both")


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Everything one engine instance needs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    speculative: SpeculativeConfig = field(default_factory=SpeculativeConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    # The grammar library for structured output (corral/structured/backend.py).
    structured_output_backend: str = "xgrammar"
    # Check the KV manager's integrity invariant after every step (slow; tests and debugging).
    debug_check_integrity: bool = False
    # Append every step's shape and duration here (JSON lines; corral.engine.step_log).
    step_log_path: str | None = None
    # KV cache events for routers (off by default; --kv-events-config).
    kv_events: KVEventsConfig = field(default_factory=KVEventsConfig)
    # Prefill/decode disaggregation (off by default; --kv-role).
    kv_transfer: KVTransferConfig = field(default_factory=KVTransferConfig)

    def __post_init__(self) -> None:
        check_tensor_parallel(self)
        policy = self.cache.kv_window_policy
        if parse_kv_window_policy(policy) is not None:
            other = "--speculative-method" if self.speculative.is_enabled else None
            other = "--kv-role" if self.kv_transfer.is_enabled else other
            if other is not None:
                raise ValueError(f"--kv-window-policy {policy!r} cannot be combined with {other}")
        if self.kv_transfer.is_enabled and self.cache.prefix_hash != "sha256":
            raise ValueError(
                "KV transfer (--kv-role) matches blocks across engines by their hashes: it needs "
                "prefix_hash 'sha256' (--prefix-hash sha256)"
            )
        if self.scheduler.preemption_mode == "swap" and self.cache.host_cache_memory is None:
            raise ValueError(
                "preemption_mode 'swap' (--preemption-mode swap) moves a preempted request's KV "
                "to the host tier, and there is none: size one with host_cache_memory "
                "(--host-cache-memory, a fraction of free memory or a size such as 4GiB), "
                "or use preemption_mode 'recompute'"
            )
