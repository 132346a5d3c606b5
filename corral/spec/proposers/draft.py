"""Draft-model proposer (torch): a small model of the same tokenizer, with its own weights, its
own paged KV (its own block accounting, corral.core.kv_cache) and its own request states, runs
k steps ahead of the target.

Each propose(): every request's draft state is synced with its verified tokens (the KV of a
rejected draft is simply recomputed: computed tokens roll back to the common prefix), then one
forward pass catches up on the new tokens and samples draft 1, and k - 1 single-token passes
sample the rest. Greedy requests get the draft's argmax (a point mass for verification); sampled
ones a draw from the draft's processed distribution q, returned with the proposal. Seeded
requests draw with the very noise the target will draw that output position with (seeded by
seed and position; see corral/spec/verify.py), so draft and target agree as often as the
coupling allows and the drafts depend on nothing else in the batch.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from corral.config import ModelConfig
from corral.core.kv_cache import KVCacheManager
from corral.core.kv_window import resolve_kv_window
from corral.model.kernels import cpu_kernels
from corral.model.kv_storage import KVSpec, KVStorage
from corral.model.layer_loop import decode_greedy
from corral.model.layers.linear import pack_weights_for_kernel
from corral.model.loader import load_model
from corral.model.models.llama import LlamaFamilyModel
from corral.model.sampler import (
    Sampler,
    SamplingRow,
    processes_logits,
    samples_greedily,
    sampling_probs,
)
from corral.model.step_inputs import RequestState, build_step_inputs, runs_as_decode_rows
from corral.request import Request
from corral.sampling_params import SamplingParams
from corral.spec.proposer import PROPOSERS, Proposal, ProposalRequest, Proposer


@dataclass(slots=True)
class _DraftRequest:
    book: Request  # block accounting for the draft's KV manager (its ids and computed count)
    state: RequestState  # tokens and block table for the draft's forward passes
    num_synced: int = 0  # len of the verified tokens at the last sync


@PROPOSERS.register("draft")
class DraftProposer(Proposer):
    """Proposes with a small model; see the module docstring."""

    name = "draft"

    def __init__(
        self, model: LlamaFamilyModel, num_blocks: int, block_size: int, max_model_len: int
    ) -> None:
        self.model = model
        self.device = model.device
        self.max_model_len = max_model_len
        arch = model.arch
        spec = KVSpec(
            arch.num_layers, block_size, arch.num_kv_heads, arch.head_dim, model.dtype, model.dtype
        )
        self.storage = KVStorage(spec, num_blocks, self.device)
        self.kv = KVCacheManager(num_blocks, block_size, enable_prefix_caching=False)
        self.block_size = block_size
        self.sampler = Sampler(0, self.device)
        self.requests: dict[str, _DraftRequest] = {}

    @classmethod
    def create(
        cls,
        draft_model: str,
        target_vocab_size: int,
        dtype: torch.dtype,
        device: torch.device,
        num_blocks: int,
        block_size: int,
        max_model_len: int,
    ) -> DraftProposer:
        """Load the draft model (a directory or a bundled name) next to the target."""
        from corral.model.resolve import resolve_model

        model_dir, arch, draft_max_len = resolve_model(ModelConfig(model=draft_model))
        if arch.vocab_size != target_vocab_size:
            raise ValueError(
                f"draft model {draft_model!r} has a vocabulary of {arch.vocab_size} tokens, the "
                f"target {target_vocab_size}: a draft must share the target's tokenizer"
            )
        if draft_max_len < max_model_len:
            raise ValueError(
                f"draft model {draft_model!r} handles {draft_max_len} positions, fewer than the "
                f"target's max_model_len {max_model_len}"
            )
        model = load_model(Path(model_dir), arch, dtype, device, max_model_len)
        pack_weights_for_kernel(model)
        return cls(model, num_blocks, block_size, max_model_len)

    def propose(self, requests: list[ProposalRequest]) -> dict[str, Proposal]:
        active: list[tuple[ProposalRequest, _DraftRequest]] = []
        for request in requests:
            if request.max_num_tokens <= 0:
                continue
            draft = self._sync(request)
            # Room for the verified tokens and the k - 1 drafts fed back in.
            num_new = len(request.token_ids) + request.max_num_tokens - 1
            num_new -= draft.book.num_computed_tokens
            block_ids = self.kv.allocate_slots(draft.book, num_new)
            if block_ids is None:
                continue  # the draft pool is full: no proposal for this one
            draft.state.block_ids.extend(block_ids)
            active.append((request, draft))
        proposed: dict[str, list[int]] = {request.request_id: [] for request, _ in active}
        probs: dict[str, list[torch.Tensor]] = {request.request_id: [] for request, _ in active}
        self.catchup_time_s = 0.0
        with torch.inference_mode():
            # Greedy requests without logit processing whose catch-up runs as decode rows: the
            # catch-up and every draft in one kernel call.
            active = self._decode_greedy(active, proposed, catch_up=True)
            first = True
            while active:
                # The first pass catches up where a request is further behind than decode rows
                # take (a prompt, as a rule): timed for the controller.
                catches_up = first and any(
                    not runs_as_decode_rows(
                        len(draft.state.token_ids) - draft.state.num_computed_tokens
                    )
                    for _, draft in active
                )
                start = time.perf_counter()
                self._step(active, proposed, probs)
                if catches_up:
                    self.catchup_time_s = time.perf_counter() - start
                active = [
                    (request, draft)
                    for request, draft in active
                    if len(proposed[request.request_id]) < request.max_num_tokens
                ]
                if first:
                    active = self._decode_greedy(active, proposed, catch_up=False)
                    first = False
        return {
            request_id: Proposal(
                tokens, torch.stack(probs[request_id]) if probs[request_id] else None
            )
            for request_id, tokens in proposed.items()
        }

    def forget(self, request_ids: Iterable[str], finished: bool) -> None:
        for request_id in request_ids:
            draft = self.requests.pop(request_id, None)
            if draft is not None:
                self.kv.free(draft.book)

    # ----- internals -------------------------------------------------------------------------

    def _sync(self, request: ProposalRequest) -> _DraftRequest:
        """The draft state of a request, its tokens set to the verified ones and its computed
        count rolled back to the prefix it shares with them."""
        draft = self.requests.get(request.request_id)
        verified = request.token_ids
        if draft is None:
            book = Request(
                request.request_id,
                verified[: request.num_prompt_tokens],
                SamplingParams(max_tokens=1),
                max_model_len=self.max_model_len + 1,
            )
            state = RequestState(
                request.request_id,
                list(verified),
                request.num_prompt_tokens,
                request.params,
                [],
                0,
                frozenset(),
            )
            draft = self.requests[request.request_id] = _DraftRequest(book, state, len(verified))
            return draft
        state = draft.state
        tokens = state.token_ids
        # tokens[:num_synced] are verified tokens of the last sync; verified tokens only grow.
        # The last verified token is always computed again: its logits give the first draft.
        limit = min(state.num_computed_tokens, len(verified) - 1)
        common = min(draft.num_synced, limit)
        while common < limit and tokens[common] == verified[common]:
            common += 1
        del tokens[common:]
        tokens.extend(verified[common:])
        state.num_computed_tokens = common
        draft.book.num_computed_tokens = common
        draft.num_synced = len(verified)
        return draft

    def _decode_greedy(
        self,
        active: list[tuple[ProposalRequest, _DraftRequest]],
        proposed: dict[str, list[int]],
        catch_up: bool,
    ) -> list[tuple[ProposalRequest, _DraftRequest]]:
        """The remaining drafts of greedy requests without logit processing in one kernel call
        per group of equal remaining count (no per-pass Python; corral/model/layer_loop.py
        decode_greedy). catch_up: the requests' uncomputed tokens first (only where they run
        as decode rows); else they were just computed by _step. Returns the requests left."""
        kernels = cpu_kernels() if self.device.type == "cpu" else None
        if kernels is None or not active:
            return active
        groups: dict[int, list[tuple[ProposalRequest, _DraftRequest]]] = {}
        rest = []
        for request, draft in active:
            state = draft.state
            num_uncomputed = len(state.token_ids) - state.num_computed_tokens
            if (
                samples_greedily(request.params)
                and not processes_logits(request.params)
                and (not catch_up or runs_as_decode_rows(num_uncomputed))
            ):
                remaining = request.max_num_tokens - len(proposed[request.request_id])
                groups.setdefault(remaining, []).append((request, draft))
            else:
                rest.append((request, draft))
        for num_steps, group in groups.items():
            sequences = []
            for _, draft in group:
                state = draft.state
                first = state.num_computed_tokens if catch_up else len(state.token_ids) - 1
                sequences.append((state.token_ids[first:], first, state.block_ids))
            tokens = decode_greedy(
                self.model,
                kernels,
                self.storage.layer_caches,
                sequences,
                self.block_size,
                num_steps,
            )
            if tokens is None:  # a property of the model: no group can take the loop
                return active
            for (request, draft), row in zip(group, tokens):
                draft.state.token_ids.extend(row)
                draft.state.num_computed_tokens = len(draft.state.token_ids) - 1
                draft.book.num_computed_tokens = draft.state.num_computed_tokens
                proposed[request.request_id].extend(row)
        return rest

    def _step(
        self,
        active: list[tuple[ProposalRequest, _DraftRequest]],
        proposed: dict[str, list[int]],
        probs: dict[str, list[torch.Tensor]],
    ) -> None:
        """One draft forward pass over the active requests' uncomputed tokens; one draft each."""
        scheduled = [
            (draft.state, len(draft.state.token_ids) - draft.state.num_computed_tokens)
            for _, draft in active
        ]
        order = sorted(
            range(len(scheduled)), key=lambda i: not runs_as_decode_rows(scheduled[i][1])
        )
        scheduled = [scheduled[i] for i in order]
        active = [active[i] for i in order]
        inputs = build_step_inputs(
            scheduled,
            self.block_size,
            resolve_kv_window(self.model.arch.uniform_sliding_window, None),
            self.device,
        )
        hidden = self.model.forward(
            inputs.input_ids, inputs.positions, self.storage.layer_caches, inputs.metadata
        )
        last_rows = [row_end - 1 for _, row_end in inputs.row_ranges]
        logits = self.model.compute_logits(hidden[last_rows])
        if any(processes_logits(request.params) for request, _ in active):
            rows = [
                SamplingRow(
                    request.params,
                    request.token_ids[: request.num_prompt_tokens],
                    draft.state.token_ids[request.num_prompt_tokens :],
                    frozenset(),
                )
                for request, draft in active
            ]
            self.sampler.process(logits, rows)
        argmax = logits.argmax(dim=-1).tolist()
        for index, (request, draft) in enumerate(active):
            state = draft.state
            # The output position this draft stands at (the target draws it with the same noise).
            position = len(state.token_ids) - request.num_prompt_tokens
            state.num_computed_tokens = len(state.token_ids)
            draft.book.num_computed_tokens = state.num_computed_tokens
            params = request.params
            if samples_greedily(params):
                token_id = argmax[index]
            else:
                q = sampling_probs(logits[index : index + 1], [params])[0]
                token_id = self.sampler.race_sample(q, params.seed, position)
                probs[request.request_id].append(q)
            state.token_ids.append(token_id)
            proposed[request.request_id].append(token_id)
