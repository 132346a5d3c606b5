"""Constrained decoding end to end on a tiny random model: every output, greedy and sampled,
parses and validates against its schema (jsonschema as the oracle) or matches its regex; the
same holds, token for token, with speculative decoding (the grammar rolled back past rejected
drafts) and under preemption (the grammar replayed from the output)."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from corral import LLM, SamplingParams
from corral.structured.params import StructuredOutputParams
from tests.model.oracle import TEST_DEVICE
from tests.structured.schemas import REGEXES, SCHEMAS

MAX_TOKENS = 120


@pytest.fixture(scope="module")
def model_path(tiny_model_factory):
    return tiny_model_factory("llama")


def make_llm(path, **kwargs) -> LLM:
    return LLM(device=TEST_DEVICE, model=str(path), dtype="float32", **kwargs)


@pytest.fixture(scope="module")
def llm(model_path) -> LLM:
    return make_llm(model_path, num_blocks=256)


def _prompts(count: int) -> list[list[int]]:
    return [[(13 * i + 7 * j + 3) % 500 + 6 for j in range(5 + i % 7)] for i in range(count)]


def _generate(llm: LLM, constraint: StructuredOutputParams, **sampling) -> list:
    params = SamplingParams(max_tokens=MAX_TOKENS, structured_output=constraint, **sampling)
    prompts = _prompts(4)
    return llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)


SAMPLING = {"greedy": dict(temperature=0.0), "sampled": dict(temperature=1.0, seed=7)}


@pytest.mark.parametrize("mode", list(SAMPLING))
@pytest.mark.parametrize("name", list(SCHEMAS))
def test_every_output_validates_against_its_schema(llm, name, mode):
    schema = SCHEMAS[name]
    outputs = _generate(llm, StructuredOutputParams(json=schema), **SAMPLING[mode])
    for output in outputs:
        completion = output.outputs[0]
        assert completion.finish_reason == "stop", completion.text
        jsonschema.validate(json.loads(completion.text), schema)


@pytest.mark.parametrize("mode", list(SAMPLING))
def test_every_output_matches_its_regex(llm, mode):
    for pattern in REGEXES:
        for output in _generate(llm, StructuredOutputParams(regex=pattern), **SAMPLING[mode]):
            assert re.fullmatch(pattern, output.outputs[0].text), (pattern, output.outputs[0].text)


def test_choice_json_object_and_grammar(llm):
    choices = ("alpha", "beta gamma", "δέλτα")
    for output in _generate(llm, StructuredOutputParams(choice=choices), temperature=1.0, seed=3):
        assert output.outputs[0].text in choices
    for output in _generate(llm, StructuredOutputParams(json_object=True), temperature=0.0):
        text = output.outputs[0].text
        if output.outputs[0].finish_reason == "stop":
            assert isinstance(json.loads(text), dict)
        else:
            assert text.startswith("{")
    grammar = 'root ::= "(" num ("+" num)* ")"\nnum ::= [1-9] [0-9]?'
    for output in _generate(llm, StructuredOutputParams(grammar=grammar), temperature=1.0, seed=5):
        assert re.fullmatch(r"\([1-9][0-9]?(\+[1-9][0-9]?)*\)", output.outputs[0].text)


def test_unconstrained_requests_in_the_same_batch_are_untouched(llm):
    prompts = [{"prompt_token_ids": p} for p in _prompts(3)]
    plain = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    alone = [o.outputs[0].token_ids for o in llm.generate(prompts, plain, use_tqdm=False)]
    constrained = SamplingParams(
        max_tokens=12, temperature=0.0, structured_output=StructuredOutputParams(regex="[a-z]+")
    )
    mixed = llm.generate(prompts + prompts, [plain] * 3 + [constrained] * 3, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in mixed[:3]] == alone


CONSTRAINTS = [
    StructuredOutputParams(json=SCHEMAS["nested"]),
    StructuredOutputParams(regex=REGEXES[0]),
]


@pytest.mark.parametrize(
    "method",
    [dict(speculative_method="ngram", speculative_ngram_min=1), dict(speculative_method="suffix")],
)
def test_speculative_decoding_gives_the_same_constrained_text(model_path, llm, method):
    spec = make_llm(
        model_path,
        num_blocks=256,
        num_speculative_tokens=4,
        speculative_tokens_rule="fixed",
        **method,
    )
    for constraint in CONSTRAINTS:
        for sampling in SAMPLING.values():
            expected = [o.outputs[0].token_ids for o in _generate(llm, constraint, **sampling)]
            got = [o.outputs[0].token_ids for o in _generate(spec, constraint, **sampling)]
            assert got == expected


def test_preemption_replays_the_grammar(model_path, llm):
    small = make_llm(model_path, num_blocks=18, block_size=8, max_num_seqs=4)
    constraint = CONSTRAINTS[0]
    expected = [o.outputs[0].token_ids for o in _generate(llm, constraint, temperature=0.0)]
    outputs = _generate(small, constraint, temperature=0.0)
    assert [o.outputs[0].token_ids for o in outputs] == expected
    assert small.engine.core.scheduler.stats().num_preemptions > 0
