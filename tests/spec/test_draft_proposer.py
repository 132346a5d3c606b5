"""The draft proposer's one-call greedy loop (corral/model/layer_loop.py decode_greedy) against
its step-by-step passes and against transformers' greedy decoding of the draft model."""

from __future__ import annotations

import pytest
import torch

import corral.spec.proposers.draft as draft_module
from corral.model.kernels import cpu_kernels
from corral.model.layer_loop import decode_greedy
from corral.sampling_params import SamplingParams
from corral.spec.proposer import ProposalRequest
from corral.spec.proposers.draft import DraftProposer
from tests.model.oracle import hf_greedy

VOCAB = 512
GREEDY = SamplingParams(temperature=0)
BIASED = SamplingParams(temperature=0, logit_bias={7: 5.0})  # takes the step-by-step passes


def make(path, dtype: torch.dtype, one_call: bool) -> DraftProposer:
    proposer = DraftProposer.create(
        str(path), VOCAB, dtype, torch.device("cpu"), num_blocks=64, block_size=4,
        max_model_len=256,
    )  # fmt: skip
    if not one_call:
        proposer._decode_greedy = lambda active, proposed, catch_up: active  # type: ignore[method-assign]
    return proposer


def rounds(proposer: DraftProposer, prompts: list[list[int]], ks: list[int], params) -> list:
    """Four rounds of proposals; after each, the first half of every proposal (and a bonus
    token) is 'verified', as the target would accept a prefix."""
    verified = [list(prompt) for prompt in prompts]
    history = []
    for round_index in range(4):
        requests = [
            ProposalRequest(str(i), list(tokens), len(prompts[i]), ks[i], params[i])
            for i, tokens in enumerate(verified)
        ]
        proposals = proposer.propose(requests)
        history.append({key: proposal.token_ids for key, proposal in proposals.items()})
        for i, tokens in enumerate(verified):
            drafted = proposals[str(i)].token_ids
            tokens += drafted[: len(drafted) // 2] + [(round_index * 13 + i) % 500 + 3]
    proposer.kv.check_integrity()
    return history


@pytest.mark.skipif(cpu_kernels() is None, reason="CPU kernels unavailable")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_call_loop_proposes_what_step_by_step_passes_do(tiny_model, dtype, monkeypatch):
    """Catch-ups of up to 16 tokens (the 9-token prompt, later rounds' verified tokens) run in
    the kernel call too; the 30- and 17-token prompts take a forward pass first."""
    prompts = [[(5 * i + 11) % 500 + 3 for i in range(n)] for n in (9, 30, 17)]
    ks, params = [4, 4, 2], [GREEDY, GREEDY, BIASED]
    catch_ups = []

    def recording(model, kernels, caches, sequences, block_size, num_steps):
        catch_ups.extend(len(tokens) for tokens, _, _ in sequences)
        return decode_greedy(model, kernels, caches, sequences, block_size, num_steps)

    monkeypatch.setattr(draft_module, "decode_greedy", recording)
    fast = rounds(make(tiny_model, dtype, True), prompts, ks, params)
    assert 9 in catch_ups and max(catch_ups) <= 16 and 1 in catch_ups
    slow = rounds(make(tiny_model, dtype, False), prompts, ks, params)
    assert fast == slow
    assert all(len(round_[str(i)]) == ks[i] for round_ in fast for i in range(3))


@pytest.mark.skipif(cpu_kernels() is None, reason="CPU kernels unavailable")
def test_one_call_loop_matches_transformers(tiny_model):
    prompt = [(7 * i + 2) % 500 + 3 for i in range(21)]
    proposer = make(tiny_model, torch.float32, True)
    request = ProposalRequest("a", list(prompt), len(prompt), 6, GREEDY)
    assert proposer.propose([request])["a"].token_ids == hf_greedy(tiny_model, prompt, 6)[0]
