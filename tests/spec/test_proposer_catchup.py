"""Lookup proposers time their catch-up (corral/spec/proposer.py catchup_time_s): indexing a
request's tokens beyond the last ones it syncs every step. The controller prices that per token
apart from a proposal's call; untimed, a fit of a few proposals of 32 new requests priced the
n-gram's indexing as a 1.3 ms call and the adaptive rule stopped proposing."""

from __future__ import annotations

import pytest

from corral.sampling_params import SamplingParams
from corral.spec.candidates import NUM_TOKENS_SYNCED_PER_STEP
from corral.spec.proposer import ProposalRequest
from corral.spec.proposers.ngram import NgramProposer
from corral.spec.proposers.suffix import SuffixProposer


@pytest.mark.parametrize("proposer_class", [NgramProposer, SuffixProposer])
def test_a_new_request_is_caught_up_and_a_synced_one_is_not(proposer_class) -> None:
    proposer = proposer_class()
    tokens = [t % 97 for t in range(600)]
    request = ProposalRequest("r", tokens, 500, 4, SamplingParams(temperature=0))
    proposer.propose([request])
    assert proposer.catchup_time_s > 0  # the whole sequence, new to it
    tokens += [1, 2][:NUM_TOKENS_SYNCED_PER_STEP]
    proposer.propose([ProposalRequest("r", tokens, 500, 4, SamplingParams(temperature=0))])
    assert proposer.catchup_time_s == 0.0  # only the tokens synced each step
    tokens += list(range(3, 40))
    proposer.propose([ProposalRequest("r", tokens, 500, 4, SamplingParams(temperature=0))])
    assert proposer.catchup_time_s > 0  # resumed after many tokens


def test_split_indexing_proposes_as_indexing_at_once(monkeypatch) -> None:
    """The n-gram index built in two parts (catch-up, then the synced tokens) proposes what one
    built at once does, along a growing sequence."""
    import corral.spec.proposers.ngram as ngram

    tokens = [t % 13 for t in range(300)]
    split = NgramProposer()
    monkeypatch.setattr(ngram, "NUM_TOKENS_SYNCED_PER_STEP", 10**9)  # never split
    whole = NgramProposer()
    for step in range(40):
        tokens += [(step * 7) % 13, (step * 3) % 11]
        request = ProposalRequest("r", list(tokens), 200, 4, SamplingParams(temperature=0))
        monkeypatch.setattr(ngram, "NUM_TOKENS_SYNCED_PER_STEP", NUM_TOKENS_SYNCED_PER_STEP)
        a = split.propose([request])
        monkeypatch.setattr(ngram, "NUM_TOKENS_SYNCED_PER_STEP", 10**9)
        b = whole.propose([request])
        assert a == b
