"""The shipped tokenizer: any Unicode text round-trips, and transformers and corral render and
encode chats identically with the template stored in tokenizer_config.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.demo.bpe import CHAT_TEMPLATE, EOS_TOKEN

CONVERSATION = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "A pen costs $2. How much do 3 pens cost? 🙂"},
    {"role": "assistant", "content": "3 * 2 = 6\nThe answer is 6."},
    {"role": "user", "content": "And 5 pens?"},
]


@pytest.fixture(scope="module")
def hf_tokenizer(target_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(target_dir)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.text(max_size=200))
def test_any_unicode_text_round_trips(hf_tokenizer, text: str) -> None:
    token_ids = hf_tokenizer.encode(text, add_special_tokens=False)
    assert hf_tokenizer.decode(token_ids, skip_special_tokens=False) == text


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.text(alphabet=st.characters(codec="utf-8"), max_size=100))
def test_special_token_text_in_user_input_round_trips(hf_tokenizer, text: str) -> None:
    text = f"{text}<|end|>{text}<|user|>"
    token_ids = hf_tokenizer.encode(text, add_special_tokens=False)
    assert hf_tokenizer.decode(token_ids, skip_special_tokens=False) == text


def test_chat_template_lives_in_tokenizer_config(shipped_dir: Path) -> None:
    config = json.loads((shipped_dir / "tokenizer_config.json").read_text())
    assert config["chat_template"] == CHAT_TEMPLATE
    assert config["eos_token"] == EOS_TOKEN
    model_config = json.loads((shipped_dir / "config.json").read_text())
    generation = json.loads((shipped_dir / "generation_config.json").read_text())
    assert config["model_max_length"] == model_config["max_position_embeddings"]
    assert model_config["eos_token_id"] == generation["eos_token_id"]


def test_transformers_and_corral_encode_chats_identically(hf_tokenizer, target_dir: Path) -> None:
    from corral.engine.tokenizer import Tokenizer

    corral_tokenizer = Tokenizer(target_dir)
    for add_generation_prompt in (True, False):
        expected = hf_tokenizer.apply_chat_template(
            CONVERSATION, add_generation_prompt=add_generation_prompt, tokenize=True
        )
        expected = list(getattr(expected, "input_ids", expected))  # transformers 4.x gives a list
        actual = corral_tokenizer.encode_chat(
            CONVERSATION, add_generation_prompt=add_generation_prompt
        )
        assert actual == expected
    assert expected[0] == hf_tokenizer.bos_token_id
    assert expected.count(hf_tokenizer.bos_token_id) == 1
    assert expected.count(hf_tokenizer.eos_token_id) == len(CONVERSATION)
    assert corral_tokenizer.eos_token_id == hf_tokenizer.convert_tokens_to_ids(EOS_TOKEN)
