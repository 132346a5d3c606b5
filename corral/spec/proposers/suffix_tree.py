"""A depth-limited suffix tree over token sequences, torch-free (suffix decoding, after Oliaro et
al., "SuffixDecoding"): every suffix of every sequence, cut to max_depth tokens, is a path from the
root, and each node counts the suffixes through it, i.e. how often its token string occurs.

A chain that only one suffix passes through is kept as a leaf, (sequence, start, limit), instead of
a node per token: it grows by itself as its sequence grows, and is split into nodes only when a
second occurrence reaches it. Appending a token costs O(max_depth) amortised, removing a sequence
O(len * max_depth).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from typing import NamedTuple


class _Leaf:
    """The count-1 chain seq[start : min(len(seq), limit)] of one suffix. The suffix starts at
    limit - max_depth and the chain's first token at tree depth start - (limit - max_depth) + 1."""

    __slots__ = ("seq", "start", "limit", "alive")
    count = 1

    def __init__(self, seq: list[int], start: int, limit: int) -> None:
        self.seq = seq
        self.start = start
        self.limit = limit
        self.alive = True


class _Node:
    """A token string seen count times. best: the key of the most frequent child (ties: the
    smallest token), or -1 when unknown (recomputed on demand)."""

    __slots__ = ("count", "children", "best")

    def __init__(self, count: int) -> None:
        self.count = count
        self.children: dict[int, _Node | _Leaf] = {}
        self.best = -1

    def best_token(self) -> int:
        if self.best < 0 and self.children:
            items = self.children.items()
            self.best = max(items, key=lambda item: (item[1].count, -item[0]))[0]
        return self.best

    def bumped(self, token: int, child: _Node | _Leaf) -> None:
        """Keeps best after child (under token) gained a count."""
        best = self.best
        if best >= 0 and best != token:
            count = self.children[best].count
            if child.count > count or (child.count == count and token < best):
                self.best = token


class _Active:
    """A suffix of a sequence still shorter than max_depth: it starts at seq[start]; node is a
    node on its path at depth depth; leaf is its own leaf while it ends inside one."""

    __slots__ = ("start", "node", "depth", "leaf")

    def __init__(self, start: int, node: _Node) -> None:
        self.start = start
        self.node = node
        self.depth = 0
        self.leaf: _Leaf | None = None


class _Sequence:
    __slots__ = ("token_ids", "active")

    def __init__(self) -> None:
        self.token_ids: list[int] = []
        # The suffixes starting in [len - max_depth + 1, len), oldest first.
        self.active: list[_Active] = []


class Speculation(NamedTuple):
    """token_ids: the proposed continuation; score: its expected number of accepted tokens (the sum
    of the path probabilities of its prefixes); match_len: how many context tokens matched."""

    token_ids: list[int]
    score: float
    match_len: int


class SuffixTree:
    """Suffixes of several sequences (keyed by any hashable id), each cut to max_depth tokens.
    Token ids are ints >= 0."""

    def __init__(self, max_depth: int = 24) -> None:
        if max_depth < 2:
            raise ValueError(f"max_depth must be >= 2, got {max_depth}")
        self.max_depth = max_depth
        self._root = _Node(0)
        self._sequences: dict[Hashable, _Sequence] = {}

    def __contains__(self, seq_id: object) -> bool:
        return seq_id in self._sequences

    @property
    def num_sequences(self) -> int:
        """How many sequences the tree holds."""
        return len(self._sequences)

    @property
    def num_tokens(self) -> int:
        """The total length of the sequences (the root's count)."""
        return self._root.count

    def is_empty(self) -> bool:
        """True when no token is in the tree (no node left under the root)."""
        return not self._root.children

    def sequence(self, seq_id: Hashable) -> list[int]:
        """A copy of a sequence's tokens."""
        return list(self._sequences[seq_id].token_ids)

    def sequence_length(self, seq_id: Hashable) -> int:
        """How many tokens a sequence has (0 for an unknown one)."""
        sequence = self._sequences.get(seq_id)
        return 0 if sequence is None else len(sequence.token_ids)

    def append(self, seq_id: Hashable, token_ids: Iterable[int]) -> None:
        """Appends tokens to a sequence (a new one when seq_id is unknown), adding the suffixes
        they extend or start."""
        sequence = self._sequences.get(seq_id)
        if sequence is None:
            sequence = self._sequences[seq_id] = _Sequence()
        for token in token_ids:
            self._append_one(sequence, token)

    def _append_one(self, sequence: _Sequence, token: int) -> None:
        root = self._root
        seq = sequence.token_ids
        seq.append(token)
        num_tokens = len(seq)
        root.count += 1
        active = sequence.active
        active.append(_Active(num_tokens - 1, root))
        max_depth = self.max_depth
        for suffix in active:
            leaf = suffix.leaf
            if leaf is not None and leaf.alive:
                continue  # it ends inside its own leaf, which has grown with seq
            start = suffix.start
            node = suffix.node
            depth = suffix.depth
            # Its leaf died in a split at its end: down the nodes made since, to its end.
            end_depth = num_tokens - 1 - start
            while depth < end_depth:
                node = node.children[seq[start + depth]]
                depth += 1
            child = node.children.get(token)
            if child is None:
                suffix.leaf = node.children[token] = _Leaf(seq, num_tokens - 1, start + max_depth)
                node.bumped(token, suffix.leaf)
            else:
                if type(child) is _Node:
                    child.count += 1
                else:
                    child = node.children[token] = _split(child)
                node.bumped(token, child)
                node = child
                depth += 1
            suffix.node = node
            suffix.depth = depth
        if num_tokens - active[0].start >= max_depth:
            del active[0]  # it has max_depth tokens: complete

    def remove(self, seq_id: Hashable) -> None:
        """Removes a sequence's suffixes (KeyError if unknown); nodes left with no count go."""
        sequence = self._sequences.pop(seq_id)
        seq = sequence.token_ids
        num_tokens = len(seq)
        root = self._root
        root.count -= num_tokens
        for start in range(num_tokens):
            node = root
            for pos in range(start, min(num_tokens, start + self.max_depth)):
                token = seq[pos]
                child = node.children[token]
                if node.best == token:
                    node.best = -1
                if type(child) is _Leaf:
                    child.alive = False
                    del node.children[token]  # this suffix's own leaf: the rest of its path
                    break
                child.count -= 1
                if child.count == 0:
                    del node.children[token]  # with everything below it (all count 0)
                    break
                node = child

    def count(self, pattern: Sequence[int]) -> int:
        """How often pattern (at most max_depth tokens) occurs in the sequences."""
        if len(pattern) > self.max_depth:
            raise ValueError(f"pattern longer than max_depth={self.max_depth}")
        found = self._find(list(pattern), 0, len(pattern))
        return 0 if found is None else found[0].count

    def _find(self, token_ids: list[int], begin: int, end: int) -> tuple[_Node | _Leaf, int] | None:
        """Where the path token_ids[begin:end] ends: (node, -1), or (leaf, index in leaf.seq of
        the last matched token) inside a leaf; None if the tree lacks it."""
        node = self._root
        for i in range(begin, end):
            child = node.children.get(token_ids[i])
            if child is None:
                return None
            if type(child) is _Leaf:
                # The rest, token_ids[i + 1 : end], must follow in the leaf's chain (paths are at
                # most max_depth long, so within its limit).
                first = child.start + 1
                last = first + end - i - 1
                if last > len(child.seq):
                    return None
                if child.seq[first:last] != token_ids[i + 1 : end]:
                    return None
                return child, last - 1
            node = child
        return node, -1

    def _continuable(self, token_ids: list[int], begin: int) -> tuple[_Node | _Leaf, int] | None:
        """_find for the suffix token_ids[begin:] when some token follows it in the tree."""
        found = self._find(token_ids, begin, len(token_ids))
        if found is None:
            return None
        node, pos = found
        if type(node) is _Leaf:
            return found if pos + 1 < min(len(node.seq), node.limit) else None
        return found if node.children else None

    def speculate(
        self,
        context_ids: Sequence[int],
        max_num_tokens: int,
        min_token_prob: float = 0.1,
        min_match: int = 1,
    ) -> Speculation:
        """Proposes what follows context_ids: the longest suffix of the context (min_match tokens
        at least) that the tree has seen followed by something, then the most frequent child (ties:
        the smallest token) as long as the path probability, the product of count(child) /
        count(node) from the match on, stays >= min_token_prob; at most max_num_tokens tokens.

        A match leaves room for max_depth - match_len tokens, so matches are cut to
        max(max_depth - max_num_tokens, max_depth // 2) tokens (and max_depth - 1).
        """
        max_depth = self.max_depth
        num_context = len(context_ids)
        min_match = max(1, min_match)
        max_match = min(
            num_context, max_depth - 1, max(min_match, max_depth - max_num_tokens, max_depth // 2)
        )
        if max_num_tokens <= 0 or max_match < min_match or not self._root.children:
            return Speculation([], 0.0, 0)
        tail = list(context_ids[num_context - max_match :])
        # Longest first (the common case in repetitive text), then a binary search: a suffix
        # followed by x is followed by x wherever it occurs, so shorter ones are too.
        match_len = max_match
        found = self._continuable(tail, 0)
        low, high = min_match, max_match - 1 if found is None else min_match - 1
        while low <= high:
            mid = (low + high) // 2
            at_mid = self._continuable(tail, max_match - mid)
            if at_mid is None:
                high = mid - 1
            else:
                match_len, found, low = mid, at_mid, mid + 1
        if found is None:
            return Speculation([], 0.0, 0)
        return self._walk(found, max_num_tokens, min_token_prob, match_len)

    def _walk(
        self,
        found: tuple[_Node | _Leaf, int],
        max_num_tokens: int,
        min_token_prob: float,
        match_len: int,
    ) -> Speculation:
        node, pos = found
        token_ids: list[int] = []
        prob = 1.0
        score = 0.0
        while len(token_ids) < max_num_tokens:
            if type(node) is _Leaf:
                # Inside a chain every step has probability 1.
                stop = min(len(node.seq), node.limit, pos + 1 + max_num_tokens - len(token_ids))
                rest = node.seq[pos + 1 : stop]
                token_ids.extend(rest)
                score += prob * len(rest)
                break
            token = node.best_token()
            if token < 0:
                break
            child = node.children[token]
            child_prob = prob * child.count / node.count
            if child_prob < min_token_prob:
                break
            prob = child_prob
            token_ids.append(token)
            score += prob
            node, pos = child, (child.start if type(child) is _Leaf else -1)
        return Speculation(token_ids, score, match_len)


def _split(leaf: _Leaf) -> _Node:
    """A node (count 2) for the leaf's first token, now reached by a second suffix; the rest of
    the chain, if any, moves under it (the same leaf object, so its suffix keeps it)."""
    node = _Node(2)
    leaf.start += 1
    if leaf.start < min(len(leaf.seq), leaf.limit):
        node.children[leaf.seq[leaf.start]] = leaf
        node.best = leaf.seq[leaf.start]
    else:
        leaf.alive = False
    return node
