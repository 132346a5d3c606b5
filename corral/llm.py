"""LLM: the offline API, shaped like vLLM's so that users can switch."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from corral.config import (
    CacheConfig,
    EngineConfig,
    KVTransferConfig,
    LoRAConfig,
    ModelConfig,
    SchedulerConfig,
    SpeculativeConfig,
)
from corral.engine.llm_engine import LLMEngine, PromptType
from corral.lora.adapter import LoRARequest
from corral.outputs import RequestOutput
from corral.sampling_params import OutputKind, SamplingParams

_CONFIG_FIELDS = {
    ModelConfig: set(ModelConfig.__dataclass_fields__),
    CacheConfig: set(CacheConfig.__dataclass_fields__),
    SchedulerConfig: set(SchedulerConfig.__dataclass_fields__),
    LoRAConfig: set(LoRAConfig.__dataclass_fields__),
}
# Keyword -> SpeculativeConfig field (vLLM's names where it has them).
SPECULATIVE_KWARGS = {
    "speculative_method": "method",
    "num_speculative_tokens": "num_tokens",
    "speculative_model": "model",
    "speculative_tokens_rule": "num_tokens_rule",
    "speculative_ngram_min": "ngram_min",
    "speculative_ngram_max": "ngram_max",
}
# Keyword -> KVTransferConfig field (disaggregation; the --kv-* flags' names).
KV_TRANSFER_KWARGS = {
    "kv_role": "role",
    "kv_transfer_host": "host",
    "kv_transfer_port": "port",
    "kv_transfer_transport": "transport",
    "kv_lease_timeout_s": "lease_timeout_s",
}


def engine_config_from_kwargs(**kwargs: Any) -> EngineConfig:
    """Build an EngineConfig from flat keyword arguments (model=..., block_size=..., ...).

    `scheduling_policy` is accepted for `policy`. Unknown names raise ValueError.
    """
    if "scheduling_policy" in kwargs:
        kwargs["policy"] = kwargs.pop("scheduling_policy")
    debug = bool(kwargs.pop("debug_check_integrity", False))
    step_log_path = kwargs.pop("step_log_path", None)
    structured_backend = kwargs.pop("structured_output_backend", "xgrammar")
    speculative = {
        SPECULATIVE_KWARGS[name]: kwargs.pop(name)
        for name in list(kwargs)
        if name in SPECULATIVE_KWARGS
    }
    kv_transfer = {
        KV_TRANSFER_KWARGS[name]: kwargs.pop(name)
        for name in list(kwargs)
        if name in KV_TRANSFER_KWARGS
    }
    if "num_tokens" in speculative:
        speculative["num_speculative_tokens"] = speculative.pop("num_tokens")
    parts: dict[type, dict[str, Any]] = {cls: {} for cls in _CONFIG_FIELDS}
    for name, value in kwargs.items():
        owner = next((cls for cls, fields in _CONFIG_FIELDS.items() if name in fields), None)
        if owner is None:
            raise ValueError(f"unknown engine option {name!r}")
        if name == "lora_modules" and isinstance(value, dict):
            value = tuple(value.items())
        parts[owner][name] = value
    return EngineConfig(
        model=ModelConfig(**parts[ModelConfig]),
        cache=CacheConfig(**parts[CacheConfig]),
        scheduler=SchedulerConfig(**parts[SchedulerConfig]),
        speculative=SpeculativeConfig(**speculative),
        lora=LoRAConfig(**parts[LoRAConfig]),
        structured_output_backend=structured_backend,
        debug_check_integrity=debug,
        kv_transfer=KVTransferConfig(**kv_transfer),
        step_log_path=step_log_path,
    )


class LLM:
    """Load a model once, then generate for batches of prompts with continuous batching.

    LLM(model="path/to/hf-dir", dtype="bfloat16", max_num_seqs=64, ...) accepts every field of
    ModelConfig, CacheConfig and SchedulerConfig as a keyword, and speculative decoding as
    speculative_method=, num_speculative_tokens=, speculative_model= (and speculative_tokens_rule=,
    speculative_ngram_min=, speculative_ngram_max=), and structured_output_backend= (the grammar
    library of SamplingParams(structured_output=...)), and multi-LoRA as enable_lora=, max_loras=,
    max_lora_rank=, max_cpu_loras=, lora_modules=((name, path), ...), and disaggregation as
    kv_role=, kv_transfer_host=, kv_transfer_port=, kv_transfer_transport=,
    kv_lease_timeout_s= (then LLM.engine.add_request(..., kv_transfer_params=...)), and
    step_log_path= (every step's shape and duration, for `corral simulate`'s profiles). model=None
    uses the bundled demo. tensor_parallel_size=N splits the model over N processes (shutdown()
    stops them); with enable_expert_parallel=True a mixture-of-experts model's ranks hold
    whole experts.
    """

    def __init__(self, model: str | None = None, **kwargs: Any) -> None:
        self.engine = LLMEngine(engine_config_from_kwargs(model=model, **kwargs))
        self._ids = itertools.count()

    @classmethod
    def from_config(cls, config: EngineConfig) -> LLM:
        llm = cls.__new__(cls)
        llm.engine = LLMEngine(config)
        llm._ids = itertools.count()
        return llm

    def shutdown(self) -> None:
        """Flush background KV writes and stop the tensor-parallel workers (tensor_parallel_size
        > 1; they also exit when this process does). The LLM cannot generate afterwards."""
        self.engine.core.flush()
        self.engine.executor.shutdown()

    def dashboard_frame(self, since_step: int = 0) -> dict:
        """What `corral serve`'s /dashboard shows of the engine now (LLMEngine.dashboard_frame)."""
        return self.engine.dashboard_frame(since_step)

    def get_tokenizer(self):  # -> corral.engine.tokenizer.Tokenizer
        return self.engine.tokenizer

    def get_default_sampling_params(self) -> SamplingParams:
        """The model's recommended sampling (generation_config.json) over SamplingParams()."""
        return self.engine.input_processor.default_sampling_params()

    def generate(
        self,
        prompts: PromptType | Sequence[PromptType],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        use_tqdm: bool = True,
        lora_request: LoRARequest | str | Sequence[LoRARequest | str | None] | None = None,
        session_ids: Sequence[str | None] | None = None,
    ) -> list[RequestOutput]:
        """Generate for each prompt (text, token ids, or {"prompt_token_ids": [...]}); returns one
        RequestOutput per prompt, in order. Without sampling_params, the model's defaults.
        lora_request: the LoRA adapter of every prompt, or one per prompt (None: the base
        model); an adapter's name, or LoRARequest(name, path) (checked and loaded on first use).
        session_ids: the conversation each prompt is a turn of (None: none), whose KV stays
        pinned for its next turn with session_kv_ttl_s."""
        if isinstance(prompts, (str, dict)) or (
            isinstance(prompts, list) and prompts and isinstance(prompts[0], int)
        ):
            prompts = [prompts]  # type: ignore[list-item]
        prompts = list(prompts)  # type: ignore[arg-type]
        if sampling_params is None:
            sampling_params = self.get_default_sampling_params()
        if isinstance(sampling_params, SamplingParams):
            params_list = [sampling_params] * len(prompts)
        else:
            params_list = list(sampling_params)
            if len(params_list) != len(prompts):
                raise ValueError(
                    f"got {len(params_list)} sampling params for {len(prompts)} prompts"
                )
        if lora_request is None or isinstance(lora_request, (str, LoRARequest)):
            lora_list = [lora_request] * len(prompts)
        else:
            lora_list = list(lora_request)
            if len(lora_list) != len(prompts):
                raise ValueError(f"got {len(lora_list)} LoRA requests for {len(prompts)} prompts")
        if session_ids is not None and len(session_ids) != len(prompts):
            raise ValueError(f"got {len(session_ids)} session ids for {len(prompts)} prompts")
        order: dict[str, int] = {}
        try:
            for index, (prompt, params) in enumerate(zip(prompts, params_list)):
                request_id = str(next(self._ids))
                self.engine.add_request(
                    request_id,
                    prompt,
                    params.clone(output_kind=OutputKind.FINAL_ONLY),
                    lora_request=lora_list[index],
                    session_id=session_ids[index] if session_ids is not None else None,
                )
                order[request_id] = index
        except Exception:
            self.engine.abort_request(list(order))
            raise
        return self._run(order, use_tqdm)

    def chat(
        self,
        messages: list[dict[str, Any]] | list[list[dict[str, Any]]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        use_tqdm: bool = True,
        chat_template: str | None = None,
        add_generation_prompt: bool = True,
        lora_request: LoRARequest | str | Sequence[LoRARequest | str | None] | None = None,
    ) -> list[RequestOutput]:
        """Generate replies to one conversation (a list of {"role", "content"}) or to several
        (lora_request as in generate)."""
        conversations = messages if messages and isinstance(messages[0], list) else [messages]
        tokenizer = self.engine.tokenizer
        prompts = [
            {
                "prompt_token_ids": tokenizer.encode_chat(
                    conversation,  # type: ignore[arg-type]
                    chat_template=chat_template,
                    add_generation_prompt=add_generation_prompt,
                )
            }
            for conversation in conversations
        ]
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm, lora_request=lora_request)

    def _run(self, order: dict[str, int], use_tqdm: bool) -> list[RequestOutput]:
        results: list[RequestOutput | None] = [None] * len(order)
        progress = None
        if use_tqdm:
            from tqdm import tqdm

            progress = tqdm(total=len(order), desc="Generating", unit="req", dynamic_ncols=True)
        try:
            while self.engine.has_unfinished_requests():
                for output in self.engine.step():
                    if output.finished and output.request_id in order:
                        results[order[output.request_id]] = output
                        if progress is not None:
                            progress.update(1)
        except BaseException:
            self.engine.abort_request(list(order))
            raise
        finally:
            if progress is not None:
                progress.close()
        return [result for result in results if result is not None]
