"""Self-consistency (corral/engine/consensus.py): answers found in samples' text, votes, and
stop_when_agreed stopping the samples still running once k finished ones agree."""

from __future__ import annotations

import pytest

from corral import LLM, SamplingParams
from corral.core.messages import RequestUpdate
from corral.engine.consensus import AGREED, compile_answer_pattern, extract_answer, vote
from corral.sampling_params import OutputKind


def test_answers_are_the_last_number_or_the_patterns_group():
    default = compile_answer_pattern(None)
    assert extract_answer("3 apples and 4 pears: 1,234.", default) == "1234"
    assert extract_answer("no digits here", default) is None
    assert extract_answer("x = -2.50", default) == "-2.50"
    gsm = compile_answer_pattern(r"####\s*(\S+)")
    assert extract_answer("so 5 + 6 = 11\n#### 11", gsm) == "11"
    assert extract_answer("so 5 + 6 = 11", gsm) is None
    for bad, message in (("(", "not a valid regex"), ("(a)(b)", "at most one group")):
        with pytest.raises(ValueError, match=message):
            compile_answer_pattern(bad)


def test_vote_takes_the_most_votes_and_the_first_on_a_tie():
    consensus = vote(["7", None, "8", "8", "7"])  # 2 votes each: 7 came first
    assert (consensus.answer, consensus.num_votes, consensus.num_answered) == ("7", 2, 4)
    assert vote(["8", "7", "8"]).answer == "8"
    assert vote([None, None]).answer is None


def test_params_check_k_against_n():
    with pytest.raises(ValueError, match="stop_when_agreed"):
        SamplingParams(n=4, stop_when_agreed=5)
    with pytest.raises(ValueError, match="stop_when_agreed"):
        SamplingParams(n=1, stop_when_agreed=2)
    with pytest.raises(ValueError, match="answer_pattern"):
        SamplingParams(n=2, answer_pattern="(")


def test_the_running_samples_stop_once_k_finished_ones_agree(tiny_model):
    llm = LLM(model=str(tiny_model), dtype="float32", num_blocks=64, block_size=16)
    processor = llm.engine.output_processor
    params = SamplingParams(
        n=4, stop_when_agreed=2, max_tokens=8, output_kind=OutputKind.FINAL_ONLY
    )
    children = [f"{i}_r" for i in range(4)]
    processor.add_request("r", children, None, [1, 2, 3], params, 0.0)
    tokenizer = llm.engine.tokenizer

    def ids(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    outputs, stopped = processor.process([RequestUpdate("0_r", ids(" 42"), "stop", None)])
    assert (outputs, stopped) == ([], [])  # one vote: not yet
    outputs, stopped = processor.process(
        [
            RequestUpdate("1_r", ids(" 7"), None, None),
            RequestUpdate("2_r", ids(" 42"), "length", None),
        ]
    )
    assert sorted(stopped) == ["1_r", "3_r"]  # two agree on 42: the others stop
    (output,) = outputs
    assert output.finished
    reasons = [(c.finish_reason, c.stop_reason) for c in output.outputs]
    assert reasons == [("stop", None), ("stop", AGREED), ("length", None), ("stop", AGREED)]
    assert output.consensus.answer == "42" and output.consensus.num_votes == 2
    assert output.consensus.agreed_early
    llm.shutdown()


def test_generate_with_stop_when_agreed_ends_and_reports_a_vote(tiny_model):
    llm = LLM(model=str(tiny_model), dtype="float32", num_blocks=128, block_size=16)
    params = SamplingParams(
        n=6, stop_when_agreed=2, temperature=0, max_tokens=12, answer_pattern=r"(.)"
    )
    (output,) = llm.generate([{"prompt_token_ids": [5, 6, 7, 8]}], params, use_tqdm=False)
    # Greedy: every sample is the same text, so the first two to finish agree and the rest
    # stop early (or had finished in the same step).
    consensus = output.consensus
    assert consensus is not None and consensus.num_votes >= 2
    finished_alone = [c for c in output.outputs if c.stop_reason != AGREED]
    assert len({c.text[-1:] for c in finished_alone}) == 1
    assert len(output.outputs) == 6 and output.finished
    llm.shutdown()
