"""InputProcessor: prompts -> validated scheduler Requests (tokenization, limits, n > 1 fan-out).

It needs the tokenizer and the model's shape but not its weights, so the HTTP process uses it
while the engine core runs elsewhere.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from corral.config import EngineConfig
from corral.core.kv_capacity import check_fits_kv_pool
from corral.core.sample_fanout import fan_out_samples
from corral.engine.generation_defaults import load_generation_defaults
from corral.engine.rag_prompt import chunk_token_ids, find_chunk_spans, tokenize_with_chunks
from corral.engine.tokenizer import Tokenizer
from corral.kv_transfer.params import Resume
from corral.lora.adapter import AdapterError, AdapterRef, LoRARequest
from corral.lora.registry import AdapterRegistry
from corral.model.resolve import resolve_model
from corral.request import Request
from corral.sampling_params import SamplingParams
from corral.structured.params import StructuredOutputParams

# A prompt: text, token ids, or a dict with "prompt" or "prompt_token_ids".
PromptType = str | list[int] | Mapping[str, Any]


# The longest pause a client may announce (a day).
MAX_SESSION_PAUSE_S = 86400.0


class InputProcessor:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.model_dir, self.arch, self.max_model_len = resolve_model(
            config.model, config.cache.kv_window_policy
        )
        self.tokenizer = Tokenizer(config.model.tokenizer or self.model_dir)
        # (num_blocks, block_size) of the core's KV pool, once the core has started.
        self.kv_pool: tuple[int, int] | None = None
        self.max_live_tokens: int | None = None
        self.vocab_size = self.arch.vocab_size
        self.generation_defaults = load_generation_defaults(self.model_dir)
        eos = self.tokenizer.eos_token_id
        self.eos_token_ids = frozenset(self.arch.eos_token_ids) or (
            frozenset([eos]) if eos is not None else frozenset()
        )
        # Structured output constraints the grammar library accepted (by cache key).
        self._checked_constraints: set[tuple[str, ...]] = set()
        # LoRA adapters requests may name (None: LoRA is off).
        self.adapters: AdapterRegistry | None = None
        if config.lora.is_enabled:
            self.adapters = AdapterRegistry(self.arch, config.lora.max_lora_rank)
            for name, path in config.lora.lora_modules:
                self.adapters.add(name, path)
        # Output-length predictor (--length-predictor) for sjf/srpt and KV reservation.
        self.length_predictor = None
        if config.scheduler.length_predictor:
            from corral.predict import load_predictor

            self.length_predictor = load_predictor(config.scheduler.length_predictor)

    def check_output_constraint(self, params: SamplingParams) -> None:
        """Refuse a structured output constraint the grammar library cannot compile, or
        reasoning token ids outside the vocabulary (ValueError naming the field and the
        library's reason). The first call imports the library (seconds): from the event loop,
        run it in a worker thread (AsyncLLM.add_request_async does)."""
        if params.structured_output is not None:
            self.check_structured_output(params.structured_output)
        reasoning = params.reasoning
        if reasoning is not None:
            for token_id in (*reasoning.start_token_ids, *reasoning.end_token_ids):
                if not 0 <= token_id < self.vocab_size:
                    raise ValueError(
                        f"reasoning token id {token_id} is out of range [0, {self.vocab_size})"
                    )

    def check_structured_output(self, constraint: StructuredOutputParams) -> None:
        """Refuse a constraint the grammar library cannot compile (remembered once accepted)."""
        key = constraint.cache_key()
        if key in self._checked_constraints:
            return
        from corral.structured.manager import GRAMMAR_BACKENDS

        GRAMMAR_BACKENDS.get(self.config.structured_output_backend).check(constraint)
        if len(self._checked_constraints) >= 1024:
            self._checked_constraints.clear()
        self._checked_constraints.add(key)

    def resolve_adapter(self, lora_request: LoRARequest | str | None) -> AdapterRef | None:
        """The checked adapter a request names (None: the base model). Raises AdapterError
        (a ValueError) for an unknown or unservable adapter, or when LoRA is off."""
        if lora_request is None:
            return None
        name = lora_request if isinstance(lora_request, str) else lora_request.name
        if self.adapters is None:
            raise AdapterError(
                f"the request names LoRA adapter {name!r}, but LoRA is off (enable_lora, "
                "--enable-lora or --lora-modules)"
            )
        if isinstance(lora_request, str):
            return self.adapters.resolve(lora_request)
        return self.adapters.resolve(lora_request.name, lora_request.path)

    def set_kv_pool(
        self, num_blocks: int, block_size: int, max_live_tokens: int | None = None
    ) -> None:
        """The core's KV pool, once known: requests that can never fit it are refused (with a
        bounded attention window, by the slots a request holds at once: max_live_tokens)."""
        self.kv_pool = (num_blocks, block_size)
        self.max_live_tokens = max_live_tokens

    def check_kv_transfer(self, value: dict[str, Any] | None, n: int) -> object | None:
        """The request's kv_transfer_params, parsed; ValueError for bad ones, for n > 1, and
        when this engine has no --kv-role for them."""
        if value is None:
            return None
        from corral.kv_transfer.params import RemoteDecode, parse_kv_transfer_params

        kv_transfer = parse_kv_transfer_params(value)
        if isinstance(kv_transfer, Resume):
            self.check_token_ids(kv_transfer.output_token_ids)
        transfer = self.config.kv_transfer
        if n != 1:
            raise ValueError(f"kv_transfer_params needs n 1, got n {n}")
        if isinstance(kv_transfer, RemoteDecode) and not transfer.lends:
            raise ValueError(
                f"do_remote_decode needs an engine with --kv-role prefill or both, not "
                f"{transfer.role or 'none'}"
            )
        # A RemotePrefill on an engine that does not fetch is served by computing the prompt.
        return kv_transfer

    def predict_num_output_tokens(self, token_ids: list[int]) -> int | None:
        """The length predictor's output length for the prompt's text (None without one). It
        can be slow: AsyncLLM runs it in a worker thread, off the event loop."""
        if self.length_predictor is None:
            return None
        return self.length_predictor.predict_one(self.tokenizer.decode(token_ids))

    def default_sampling_params(self, **explicit: Any) -> SamplingParams:
        """SamplingParams with the model's generation_config.json defaults under the fields
        given explicitly (None values count as not given)."""
        given = {name: value for name, value in explicit.items() if value is not None}
        return SamplingParams(**{**self.generation_defaults, **given})

    def tokenize_prompt(
        self, prompt: PromptType, rag_chunks: list[str | list[int]] | None = None
    ) -> tuple[str | None, list[int]]:
        """Normalize a prompt to (text or None, token ids), validating the ids. With rag_chunks,
        a text prompt is tokenized piecewise at its text chunks (corral/engine/rag_prompt.py)."""
        if isinstance(prompt, Mapping) and "prompt_token_ids" not in prompt:
            if "prompt" not in prompt:
                raise ValueError("a prompt dict needs 'prompt' or 'prompt_token_ids'")
            prompt = prompt["prompt"]
        if isinstance(prompt, str):
            if rag_chunks:
                return prompt, tokenize_with_chunks(self.tokenizer, prompt, rag_chunks, True)
            return prompt, self.tokenizer.encode(prompt)
        if isinstance(prompt, Mapping):
            return prompt.get("prompt"), self.check_token_ids(prompt["prompt_token_ids"])
        return None, self.check_token_ids(prompt)

    def check_token_ids(self, token_ids: Any) -> list[int]:
        token_ids = list(token_ids)
        for token_id in token_ids:
            if not isinstance(token_id, int) or isinstance(token_id, bool):
                raise ValueError(f"prompt token id {token_id!r} is not an integer")
            if not 0 <= token_id < self.vocab_size:
                raise ValueError(
                    f"prompt token id {token_id} is out of range [0, {self.vocab_size})"
                )
        return token_ids

    def make_requests(
        self,
        request_id: str,
        token_ids: list[int],
        params: SamplingParams,
        *,
        arrival_time: float | None = None,
        priority: int = 0,
        client_id: str | None = None,
        cache_salt: str | None = None,
        deadline_s: float | None = None,
        session_id: str | None = None,
        session_pause_s: float | None = None,
        predicted_num_output_tokens: int | None = None,
        lora_request: LoRARequest | str | None = None,
        kv_transfer_params: dict[str, Any] | None = None,
        migratable: bool = False,
    ) -> list[Request]:
        """One scheduler Request per sample; child i of n > 1 is "{i}_{request_id}" with seed
        seed + i. Raises ValueError naming the value and the limit when the prompt does not fit the
        context or could never run in the core's KV pool.

        predicted_num_output_tokens: a known or externally predicted output length; without one,
        the length predictor (if configured) predicts it from the prompt's text.
        lora_request: an adapter's name, or a LoRARequest (registered on first use).
        kv_transfer_params: disaggregation or a migrated request's Resume
        (corral.kv_transfer.params), for n == 1 only.
        migratable: the client's router can continue the request on another engine.
        session_id: the conversation it is a turn of (its KV is pinned for the next turn with
        --session-kv-ttl-s); n == 1 only: samples of one request share no single next turn."""
        if session_id is not None and params.n > 1:
            raise ValueError(f"session_id needs n == 1, got n = {params.n}")
        if session_pause_s is not None:
            if session_id is None:
                raise ValueError("session_pause_s needs a session_id")
            if not 0 <= session_pause_s <= MAX_SESSION_PAUSE_S:
                raise ValueError(
                    f"session_pause_s must be in [0, {MAX_SESSION_PAUSE_S}], got {session_pause_s}"
                )
        arrival = time.monotonic() if arrival_time is None else arrival_time
        rag_chunk_spans = None
        if params.rag_chunks:
            chunks = [chunk_token_ids(self.tokenizer, chunk) for chunk in params.rag_chunks]
            rag_chunk_spans = find_chunk_spans(token_ids, chunks)
        self.check_output_constraint(params)
        adapter = self.resolve_adapter(lora_request)
        kv_transfer = self.check_kv_transfer(kv_transfer_params, params.n)
        resumed: tuple[int, ...] = ()
        if isinstance(kv_transfer, Resume):  # a migrated request goes on here
            resumed, kv_transfer = kv_transfer.output_token_ids, kv_transfer.remote
        if predicted_num_output_tokens is None:
            predicted_num_output_tokens = self.predict_num_output_tokens(token_ids)
        children = fan_out_samples(
            request_id,
            token_ids,
            params,
            predicted_num_output_tokens=predicted_num_output_tokens,
            eos_token_ids=self.eos_token_ids,
            max_model_len=self.max_model_len,
            arrival_time=arrival,
            priority=priority,
            client_id=client_id,
            cache_salt=cache_salt,
            deadline_s=deadline_s,
            lora=adapter,
            kv_transfer=kv_transfer,
            migratable=migratable,
            session_id=session_id,
            session_pause_s=session_pause_s,
            rag_chunk_spans=rag_chunk_spans,
        )
        if resumed:
            check_resumable(children[0], resumed, self.max_model_len)
            for token_id in resumed:
                children[0].append_output_token(token_id)
        if self.kv_pool is not None:  # the rule of corral/core/kv_capacity.py
            first = children[0]
            check_fits_kv_pool(
                first.num_prompt_tokens,
                first.max_tokens,
                *self.kv_pool,
                self.config.scheduler.kv_reservation,
                self.max_live_tokens,
            )
        return children


def check_resumable(
    request: Request, output_token_ids: tuple[int, ...], max_model_len: int
) -> None:
    """A migrated request's output so far must leave it something to generate."""
    if len(output_token_ids) >= request.max_tokens:
        raise ValueError(
            f"kv_transfer_params resumes {len(output_token_ids)} output tokens, but the request "
            f"allows at most {request.max_tokens}: nothing is left to generate"
        )
    if request.num_prompt_tokens + len(output_token_ids) >= max_model_len:
        raise ValueError(
            f"{request.num_prompt_tokens} prompt + {len(output_token_ids)} resumed tokens fill "
            f"the context length of {max_model_len} tokens"
        )
