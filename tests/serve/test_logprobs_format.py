"""serve/logprobs.py: a token missing from its position's logprobs is a bug, never substituted."""

from __future__ import annotations

import pytest

from corral.outputs import Logprob
from corral.serve.logprobs import completion_logprobs


class _Texts:
    def __call__(self, token_id: int) -> str:
        return f"<{token_id}>"


def test_completion_logprobs_use_the_token_s_own_entry():
    positions = [None, {4: Logprob(-0.5, 2, None), 9: Logprob(-0.1, 1, None)}]
    result = completion_logprobs([3, 4], positions, 1, _Texts())  # type: ignore[arg-type]
    assert result.token_logprobs == [None, -0.5]
    assert result.top_logprobs[1] == {"<9>": -0.1, "<4>": -0.5}


def test_completion_logprobs_refuse_a_token_missing_from_its_position():
    positions = [None, {9: Logprob(-0.1, 1, None)}]
    with pytest.raises(RuntimeError, match="no logprob for token 4 at its position"):
        completion_logprobs([3, 4], positions, 1, _Texts())  # type: ignore[arg-type]
