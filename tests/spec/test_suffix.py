"""The suffix tree and the suffix decoding proposer: hand-made cases with exact proposals, and the
tree against a brute-force reference on random sequences."""

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.sampling_params import SamplingParams
from corral.spec.proposer import PROPOSERS, ProposalRequest
from corral.spec.proposers.suffix import SuffixProposer
from corral.spec.proposers.suffix_tree import SuffixTree


def _ref_count(sequences: list[list[int]], pattern: list[int]) -> int:
    n = len(pattern)
    return sum(seq[i : i + n] == pattern for seq in sequences for i in range(len(seq) - n + 1))


def _ref_followers(sequences: list[list[int]], pattern: list[int]) -> Counter[int]:
    n = len(pattern)
    return Counter(
        seq[i + n] for seq in sequences for i in range(len(seq) - n) if seq[i : i + n] == pattern
    )


def _ref_speculate(
    sequences: list[list[int]],
    context: list[int],
    max_depth: int,
    max_num_tokens: int,
    min_token_prob: float = 0.1,
    min_match: int = 1,
) -> tuple[list[int], float, int]:
    """Same rules as SuffixTree.speculate, by scanning every sequence at every step."""
    min_match = max(1, min_match)
    max_match = min(
        len(context), max_depth - 1, max(min_match, max_depth - max_num_tokens, max_depth // 2)
    )
    if max_num_tokens <= 0:
        return [], 0.0, 0
    for match_len in range(max_match, min_match - 1, -1):
        path = context[len(context) - match_len :]
        if _ref_followers(sequences, path):
            break
    else:
        return [], 0.0, 0
    node_count = _ref_count(sequences, path)
    token_ids: list[int] = []
    prob, score = 1.0, 0.0
    while len(token_ids) < max_num_tokens and len(path) < max_depth:
        followers = _ref_followers(sequences, path)
        if not followers:
            break
        token = min(followers, key=lambda t: (-followers[t], t))
        child_prob = prob * followers[token] / node_count
        if child_prob < min_token_prob:
            break
        prob = child_prob
        token_ids.append(token)
        score += prob
        path = path + [token]
        node_count = followers[token]
    return token_ids, score, match_len


def _check_against_reference(
    tree: SuffixTree, sequences: list[list[int]], contexts: list[list[int]]
) -> None:
    max_depth = tree.max_depth
    patterns = {
        tuple(seq[i:j])
        for seq in sequences
        for i in range(len(seq))
        for j in range(i + 1, min(len(seq), i + max_depth) + 1)
    }
    patterns |= {(a,) for a in range(5)} | {(a, b) for a in range(4) for b in range(4)}
    for pattern in patterns:
        assert tree.count(pattern) == _ref_count(sequences, list(pattern)), pattern
    assert tree.num_tokens == sum(map(len, sequences))
    for context in contexts:
        for max_num_tokens in (1, 3, 8):
            for min_token_prob, min_match in ((0.0, 1), (0.1, 1), (0.4, 2), (0.7, 1)):
                got = tree.speculate(context, max_num_tokens, min_token_prob, min_match)
                want = _ref_speculate(
                    sequences, context, max_depth, max_num_tokens, min_token_prob, min_match
                )
                assert (got.token_ids, got.match_len) == (want[0], want[2]), (context, want)
                assert got.score == pytest.approx(want[1])


def _all_counts(tree: SuffixTree, vocab: int, max_len: int) -> dict[tuple[int, ...], int]:
    counts: dict[tuple[int, ...], int] = {}
    frontier: list[tuple[int, ...]] = [()]
    for _ in range(max_len):
        frontier = [p + (t,) for p in frontier for t in range(vocab) if tree.count(p + (t,))]
        counts.update((p, tree.count(p)) for p in frontier)
    return counts


def test_repeated_phrase_proposes_its_continuation() -> None:
    tree = SuffixTree(24)
    seq = [1, 2, 3, 4, 5, 9, 1, 2, 3]
    tree.append("a", seq)
    # "1 2 3" occurs twice (once at the end, with nothing after it): 4 has probability 1/2, and
    # the rest of the single earlier occurrence follows with probability 1.
    got = tree.speculate(seq, 5)
    assert got.token_ids == [4, 5, 9, 1, 2]
    assert got.match_len == 3
    assert got.score == pytest.approx(0.5 * 5)
    # The chain ends where the sequence ends.
    assert tree.speculate(seq, 10).token_ids == [4, 5, 9, 1, 2, 3]


def test_most_frequent_branch_wins_and_ties_take_the_smallest_token() -> None:
    tree = SuffixTree(8)
    for seq_id, seq in enumerate(([5, 1, 2], [5, 3, 4], [5, 1, 2])):
        tree.append(seq_id, seq)
    got = tree.speculate([9, 5], 4)
    assert got.token_ids == [1, 2]
    assert got.match_len == 1
    assert got.score == pytest.approx(2 / 3 + 2 / 3)
    tree.append(3, [5, 3, 4])
    assert tree.speculate([9, 5], 4).token_ids == [1, 2]  # 2 against 2: the smaller token
    tree.append(4, [5, 3, 4])
    assert tree.speculate([9, 5], 4).token_ids == [3, 4]


def test_threshold_cuts_the_walk() -> None:
    tree = SuffixTree(8)
    for seq_id, seq in enumerate(([5, 1, 2], [5, 1, 3], [5, 1, 2], [5, 4])):
        tree.append(seq_id, seq)
    # P(1 | 5) = 3/4, P(1 2 | 5) = 3/4 * 2/3 = 1/2.
    assert tree.speculate([5], 4, min_token_prob=0.5).token_ids == [1, 2]
    assert tree.speculate([5], 4, min_token_prob=0.6).token_ids == [1]
    assert tree.speculate([5], 4, min_token_prob=0.8).token_ids == []
    assert tree.speculate([5], 4, min_token_prob=0.8).score == 0.0


def test_max_num_tokens_and_depth_bound_the_proposal() -> None:
    tree = SuffixTree(24)
    phrase = list(range(10, 30))
    seq = phrase + [0] + phrase[:3]
    tree.append(0, seq)
    assert tree.speculate(seq, 3).token_ids == phrase[3:6]
    assert tree.speculate(seq, 0).token_ids == []
    # A depth-6 tree matches at most 5 tokens and proposes at most 6 - match_len.
    small = SuffixTree(6)
    small.append(0, seq)
    got = small.speculate(seq, 10)
    assert got.match_len == 3
    assert got.token_ids == phrase[3:6]


def test_match_is_cut_to_leave_room_for_the_proposal() -> None:
    tree = SuffixTree(8)
    seq = [1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2, 3, 4, 5, 6]
    tree.append(0, seq)
    # max_num_tokens 4: matches of max(8 - 4, 8 // 2) = 4 tokens at most, so 4 tokens fit.
    got = tree.speculate(seq, 4)
    assert (got.match_len, got.token_ids) == (4, [7, 8, 9, 1])
    got = tree.speculate(seq, 1)
    assert (got.match_len, got.token_ids) == (6, [7])


def test_incremental_append_equals_building_at_once() -> None:
    rng = random.Random(0)
    sequences = [[rng.randrange(3) for _ in range(rng.randrange(1, 60))] for _ in range(4)]
    at_once, by_token, by_chunks = SuffixTree(5), SuffixTree(5), SuffixTree(5)
    for seq_id, seq in enumerate(sequences):
        at_once.append(seq_id, seq)
    for position in range(max(map(len, sequences))):
        for seq_id, seq in enumerate(sequences):
            if position < len(seq):
                by_token.append(seq_id, [seq[position]])
    for seq_id, seq in enumerate(sequences):
        cut = rng.randrange(len(seq) + 1)
        by_chunks.append(seq_id, seq[:cut])
    for seq_id, seq in enumerate(sequences):
        by_chunks.append(seq_id, seq[len(by_chunks.sequence(seq_id)) :])
    want = _all_counts(at_once, 3, 5)
    assert want
    assert _all_counts(by_token, 3, 5) == want
    assert _all_counts(by_chunks, 3, 5) == want
    for context in [seq[:k] for seq in sequences for k in range(1, len(seq) + 1, 7)]:
        expected = at_once.speculate(context, 4)
        assert by_token.speculate(context, 4) == expected
        assert by_chunks.speculate(context, 4) == expected


def test_remove_restores_counts_and_empties_the_tree() -> None:
    rng = random.Random(1)
    sequences = {k: [rng.randrange(3) for _ in range(40)] for k in "abc"}
    tree = SuffixTree(6)
    tree.append("a", sequences["a"])
    tree.append("b", sequences["b"])
    before = _all_counts(tree, 3, 6)
    context = sequences["c"][:20]
    speculation = tree.speculate(context, 5)
    tree.append("c", sequences["c"])
    assert _all_counts(tree, 3, 6) != before
    tree.remove("c")
    assert _all_counts(tree, 3, 6) == before
    assert tree.speculate(context, 5) == speculation
    assert "c" not in tree and tree.num_sequences == 2
    tree.remove("a")
    tree.remove("b")
    assert tree.is_empty() and tree.num_tokens == 0 and tree.num_sequences == 0
    assert tree.speculate(context, 5).token_ids == []
    with pytest.raises(KeyError):
        tree.remove("a")


def test_tree_grows_after_a_removal_shares_its_nodes() -> None:
    # Sequences that share paths, one removed while the other keeps growing.
    tree = SuffixTree(4)
    tree.append("x", [1, 1, 1, 1])
    tree.append("y", [1, 1])
    tree.remove("x")
    tree.append("y", [1, 1, 2])
    sequences = [[1, 1, 1, 1, 2]]
    _check_against_reference(tree, sequences, [[1], [1, 1], [2, 1, 1], [1, 1, 1, 1]])


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_tree_matches_brute_force(data: st.DataObject) -> None:
    max_depth = data.draw(st.integers(2, 6), label="max_depth")
    vocab = data.draw(st.integers(1, 4), label="vocab")
    tokens = st.lists(st.integers(0, vocab - 1), max_size=10)
    ops = data.draw(
        st.lists(st.tuples(st.integers(0, 3), tokens, st.booleans()), min_size=1, max_size=10),
        label="ops",
    )
    tree = SuffixTree(max_depth)
    sequences: dict[int, list[int]] = {}
    for seq_id, chunk, remove in ops:
        if remove and seq_id in sequences:
            tree.remove(seq_id)
            del sequences[seq_id]
        else:
            tree.append(seq_id, chunk)
            sequences.setdefault(seq_id, []).extend(chunk)
        contexts = [seq for seq in sequences.values() if seq]
        contexts.append(data.draw(st.lists(st.integers(0, vocab), min_size=1, max_size=8)))
        _check_against_reference(tree, list(sequences.values()), contexts)
    for seq_id in list(sequences):
        tree.remove(seq_id)
    assert tree.is_empty() and tree.num_tokens == 0


@settings(max_examples=100, deadline=None)
@given(
    seq=st.lists(st.integers(0, 2), min_size=1, max_size=40),
    max_depth=st.integers(2, 8),
    max_num_tokens=st.integers(1, 6),
)
def test_growing_request_matches_brute_force(
    seq: list[int], max_depth: int, max_num_tokens: int
) -> None:
    # The per-request case: the context is the tree's own sequence, one token at a time.
    tree = SuffixTree(max_depth)
    for end in range(1, len(seq) + 1):
        tree.append(0, seq[end - 1 : end])
        got = tree.speculate(seq[:end], max_num_tokens)
        want = _ref_speculate([seq[:end]], seq[:end], max_depth, max_num_tokens)
        assert (got.token_ids, got.match_len) == (want[0], want[2])
        assert got.score == pytest.approx(want[1])


def _request(
    request_id: str, token_ids: list[int], num_prompt_tokens: int, max_num_tokens: int = 4
) -> ProposalRequest:
    return ProposalRequest(
        request_id, list(token_ids), num_prompt_tokens, max_num_tokens, SamplingParams()
    )


def test_registered_and_torch_free() -> None:
    assert PROPOSERS.get("suffix") is SuffixProposer
    assert SuffixProposer().name == "suffix"
    code = (
        "import sys, corral.spec.proposers.suffix; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_proposer_feeds_its_tree_incrementally() -> None:
    proposer = SuffixProposer()
    prompt = [1, 2, 3, 4, 5, 6, 7, 8]
    assert proposer.propose([_request("r", prompt, len(prompt))]) == {}
    tokens = prompt + [1, 2]
    got = proposer.propose([_request("r", tokens, len(prompt), max_num_tokens=3)])
    assert got["r"].token_ids == [3, 4, 5] and got["r"].probs is None
    tokens += [3, 4, 5]
    got = proposer.propose([_request("r", tokens, len(prompt), max_num_tokens=8)])
    assert got["r"].token_ids == [6, 7, 8, 1, 2, 3, 4, 5]
    # max_num_tokens 0: nothing, and no entry.
    assert proposer.propose([_request("r", tokens, len(prompt), max_num_tokens=0)]) == {}
    # Tokens that shrank (a request replaced under the same id) rebuild the tree.
    got = proposer.propose([_request("r", [9, 8, 9], 2, max_num_tokens=2)])
    assert got["r"].token_ids == [8, 9]


def _finish(
    proposer: SuffixProposer, request_id: str, prompt: list[int], output: list[int]
) -> None:
    proposer.propose([_request(request_id, prompt + output, len(prompt))])
    proposer.forget([request_id], finished=True)


def test_global_tree_proposes_a_finished_output() -> None:
    proposer = SuffixProposer()
    _finish(proposer, "a", [1, 2, 3], [10, 11, 12, 13, 14])
    assert proposer.num_cached_requests == 1
    assert proposer.global_tree.count([1, 2]) == 0  # outputs only, not prompts
    got = proposer.propose([_request("b", [4, 10, 11], 3, max_num_tokens=2)])
    assert got["b"].token_ids == [12, 13]
    # use_global_tree=False: nothing from finished requests.
    local_only = SuffixProposer(use_global_tree=False)
    _finish(local_only, "a", [1, 2, 3], [10, 11, 12, 13, 14])
    assert local_only.num_cached_requests == 0
    assert local_only.propose([_request("b", [4, 10, 11], 3)]) == {}


def test_clear_history_forgets_finished_outputs_only() -> None:
    proposer = SuffixProposer()
    _finish(proposer, "a", [1, 2, 3], [10, 11, 12, 13, 14])
    running = _request("c", [20, 21, 22, 20, 21], 2, max_num_tokens=1)
    assert proposer.propose([running])["c"].token_ids == [22]
    proposer.clear_history()
    assert proposer.num_cached_requests == 0 and proposer.global_tree.is_empty()
    assert proposer.propose([_request("b", [4, 10, 11], 3)]) == {}
    assert proposer.propose([running])["c"].token_ids == [22]  # its own tree stays
    _finish(proposer, "d", [1], [30, 31, 32])  # and the global tree fills again
    assert proposer.num_cached_requests == 1


def test_higher_score_wins_between_the_trees() -> None:
    proposer = SuffixProposer()
    for request_id in "abc":
        _finish(proposer, request_id, [0], [8, 9, 20, 21])
    # Own tree: "8 9" then 30 with probability 1/2 (score 3 * 0.5 = 1.5); global: 20 21 with
    # probability 1 (score 2).
    got = proposer.propose([_request("d", [8, 9, 30, 8, 9], 5, max_num_tokens=3)])
    assert got["d"].token_ids == [20, 21]
    # After one more "30" the own tree's "9 30" (longer match, probability 1/2) is all there is.
    got = proposer.propose([_request("d", [8, 9, 30, 8, 9, 30], 5, max_num_tokens=3)])
    assert got["d"].token_ids == [8, 9, 30]


def test_preempted_request_does_not_feed_the_global_tree() -> None:
    proposer = SuffixProposer()
    prompt, output = [1, 2, 3], [10, 11, 12, 13, 14]
    proposer.propose([_request("a", prompt + output, len(prompt))])
    proposer.forget(["a"], finished=False)
    assert proposer.num_cached_requests == 0 and proposer.global_tree.is_empty()
    assert proposer.propose([_request("b", [4, 10, 11], 3)]) == {}
    # Back after preemption: its tree is rebuilt from its tokens.
    tokens = prompt + output + [1, 2]
    assert proposer.propose([_request("a", tokens, len(prompt), 2)])["a"].token_ids == [3, 10]
    proposer.forget(["a", "never-seen"], finished=True)
    assert proposer.num_cached_requests == 1
    assert proposer.global_tree.count([14, 1, 2]) == 1


def test_fifo_eviction_bounds_the_global_tree() -> None:
    proposer = SuffixProposer(max_cached_requests=2)
    outputs = {"a": [10, 11, 12], "b": [20, 21, 22], "c": [30, 31, 32]}
    for request_id, output in outputs.items():
        _finish(proposer, request_id, [0], output)
    assert proposer.num_cached_requests == 2
    assert proposer.global_tree.num_sequences == 2
    assert proposer.global_tree.count([10]) == 0
    assert proposer.propose([_request("x", [7, 10], 2)]) == {}
    assert proposer.propose([_request("y", [7, 20], 2)])["y"].token_ids == [21, 22]
    assert proposer.propose([_request("z", [7, 30], 2)])["z"].token_ids == [31, 32]
    none_cached = SuffixProposer(max_cached_requests=0)
    _finish(none_cached, "a", [0], [1, 2])
    assert none_cached.global_tree.is_empty()


def test_bad_options_are_refused() -> None:
    for options in ({"max_depth": 1}, {"min_token_prob": 1.5}, {"max_cached_requests": -1}):
        with pytest.raises(ValueError):
            SuffixProposer(**options)


@settings(max_examples=50, deadline=None)
@given(
    seq=st.lists(st.integers(0, 3), min_size=2, max_size=60),
    max_num_tokens=st.integers(0, 6),
)
def test_proposals_never_exceed_max_num_tokens(seq: list[int], max_num_tokens: int) -> None:
    proposer = SuffixProposer(max_depth=6, min_token_prob=0.0)
    _finish(proposer, "old", [], seq)
    for end in range(1, len(seq) + 1):
        got = proposer.propose([_request("r", seq[:end], 1, max_num_tokens)])
        if "r" in got:
            assert 0 < len(got["r"].token_ids) <= max_num_tokens
        elif max_num_tokens and end < len(seq):
            # The finished copy of seq always has what follows seq[:end].
            pytest.fail(f"no proposal at {end}")
