"""The offline API end to end on a tiny model: prompt forms, outputs, n > 1, stop strings,
streaming deltas, chat, aborts and clear errors."""

from __future__ import annotations

import pytest

from corral import LLM, SamplingParams
from corral.cli import main as cli_main
from corral.model.arch import ModelArch, UnsupportedModelError
from corral.sampling_params import OutputKind


@pytest.fixture(scope="module")
def llm(tiny_model) -> LLM:
    return LLM(
        model=str(tiny_model),
        dtype="float32",
        num_blocks=128,
        max_model_len=512,
        debug_check_integrity=True,
    )


GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)


def test_prompt_forms_give_one_output_each_in_order(llm):
    text = "How many apples are left?"
    ids = llm.get_tokenizer().encode(text)
    outputs = llm.generate(
        [text, {"prompt_token_ids": ids}, {"prompt": text}], GREEDY, use_tqdm=False
    )
    assert len(outputs) == 3
    assert outputs[0].prompt == text and outputs[0].prompt_token_ids == ids
    assert outputs[0].outputs[0].token_ids == outputs[1].outputs[0].token_ids
    assert outputs[0].outputs[0].text == outputs[2].outputs[0].text
    completion = outputs[0].outputs[0]
    assert completion.finish_reason == "length" and len(completion.token_ids) == 8
    assert completion.text == llm.get_tokenizer().decode(completion.token_ids)


def test_n_samples_are_distinct_and_seed_reproducible(llm):
    params = SamplingParams(n=3, temperature=1.0, seed=5, max_tokens=10, ignore_eos=True)
    first = llm.generate("The train leaves", params, use_tqdm=False)[0]
    again = llm.generate("The train leaves", params, use_tqdm=False)[0]
    assert [c.index for c in first.outputs] == [0, 1, 2]
    assert [c.token_ids for c in first.outputs] == [c.token_ids for c in again.outputs]
    assert len({tuple(c.token_ids) for c in first.outputs}) > 1


def test_stop_string_truncates_and_reports_the_reason(llm):
    free = llm.generate("Serving large", GREEDY.clone(max_tokens=20), use_tqdm=False)[0]
    text = free.outputs[0].text
    stop = text[5:9]
    assert len(stop) == 4
    stopped = llm.generate(
        "Serving large", GREEDY.clone(max_tokens=20, stop=[stop]), use_tqdm=False
    )[0].outputs[0]
    assert stopped.finish_reason == "stop" and stopped.stop_reason == stop
    assert stopped.text == text[: text.index(stop)]
    assert len(stopped.token_ids) < 20


def test_stop_token_id_and_eos(llm):
    free = llm.generate("Natalia sold", GREEDY, use_tqdm=False)[0].outputs[0]
    stop_id = free.token_ids[3]
    stopped = llm.generate("Natalia sold", GREEDY.clone(stop_token_ids=[stop_id]), use_tqdm=False)[
        0
    ].outputs[0]
    first = free.token_ids.index(stop_id)
    assert stopped.token_ids == free.token_ids[: first + 1]
    assert stopped.finish_reason == "stop" and stopped.stop_reason == stop_id


def test_streaming_deltas_add_up_to_the_final_text(llm):
    engine = llm.engine
    engine.add_request(
        "s", "Unicode text such as", GREEDY.clone(max_tokens=15, output_kind=OutputKind.DELTA)
    )
    pieces, tokens, finished = [], [], False
    while engine.has_unfinished_requests():
        for output in engine.step():
            pieces.append(output.outputs[0].text)
            tokens += output.outputs[0].token_ids
            finished = output.finished
    assert finished and len(tokens) == 15
    assert "".join(pieces) == llm.get_tokenizer().decode(tokens)


def test_abort_mid_generation_frees_every_block(llm):
    engine = llm.engine
    for index in range(4):
        engine.add_request(
            f"a{index}", "The quick brown fox " * (index + 1), GREEDY.clone(max_tokens=50)
        )
    for _ in range(3):
        engine.step()
    outputs = engine.abort_request([f"a{i}" for i in range(4)])
    assert {o.request_id for o in outputs} == {f"a{i}" for i in range(4)}
    assert all(o.finished and o.outputs[0].finish_reason == "abort" for o in outputs)
    assert not engine.has_unfinished_requests()
    engine.step()
    engine.kv_manager.check_integrity()
    assert engine.kv_manager.num_free_blocks == engine.kv_manager.num_blocks


def test_chat_uses_the_template(llm):
    conversation = [{"role": "user", "content": "How many apples?"}]
    output = llm.chat(conversation, GREEDY, use_tqdm=False)[0]
    rendered = llm.get_tokenizer().apply_chat_template(conversation)
    assert rendered.endswith("<|assistant|>") and "How many apples?" in rendered
    assert output.prompt_token_ids == llm.get_tokenizer().encode(rendered, False)
    several = llm.chat([conversation, conversation], GREEDY, use_tqdm=False)
    assert len(several) == 2


def test_clear_errors_for_bad_prompts_and_params(llm):
    with pytest.raises(
        ValueError,
        match=r"600 prompt tokens \+ 16 requested completion tokens "
        r"exceed the context length of 512",
    ):
        llm.generate({"prompt_token_ids": [5] * 600}, SamplingParams(max_tokens=16), use_tqdm=False)
    with pytest.raises(ValueError, match=r"out of range \[0, "):
        llm.generate({"prompt_token_ids": [5, 10**6]}, use_tqdm=False)
    with pytest.raises(ValueError, match="empty"):
        llm.generate({"prompt_token_ids": []}, use_tqdm=False)
    with pytest.raises(ValueError, match="top_p must be in"):
        SamplingParams(top_p=1.5)
    with pytest.raises(ValueError, match="min_tokens"):
        SamplingParams(min_tokens=10, max_tokens=5)
    assert not llm.engine.has_unfinished_requests()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}, "GPT2LMHeadModel"),
        ({"rope_scaling": {"rope_type": "longrope", "factor": 4.0}}, "'longrope'"),
        ({"quantization_config": {"quant_method": "awq"}}, "awq"),
        ({"hidden_act": "gelu"}, "'gelu'"),
        ({"layer_types": ["full_attention", "chunked_attention"]}, "chunked_attention"),
    ],
)
def test_unsupported_models_are_refused_by_name(change, message):
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": 10,
        "hidden_size": 8,
        "intermediate_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
    }
    config.update(change)
    with pytest.raises(UnsupportedModelError, match=message):
        ModelArch.from_hf_config(config)


@pytest.mark.parametrize(
    "change, window, windowed_layers",
    [
        ({}, None, None),  # Qwen: no window without use_sliding_window
        ({"use_sliding_window": True, "max_window_layers": 1}, 4, (1, 2)),
        ({"use_sliding_window": True, "max_window_layers": 0}, 4, None),  # every layer
        ({"use_sliding_window": True, "max_window_layers": 3}, None, None),  # none
        (
            {
                "use_sliding_window": True,
                "layer_types": ["sliding_attention", "full_attention"] * 2,
            },
            4,
            (0, 2),
        ),
    ],
)
def test_qwen2_per_layer_sliding_windows(change, window, windowed_layers):
    config = {
        "architectures": ["Qwen2ForCausalLM"],
        "vocab_size": 10,
        "hidden_size": 8,
        "intermediate_size": 16,
        "num_hidden_layers": 4 if "layer_types" in change else 3,
        "num_attention_heads": 2,
        "sliding_window": 4,
        **change,
    }
    arch = ModelArch.from_hf_config(config)
    assert (arch.sliding_window, arch.windowed_layers) == (window, windowed_layers)
    assert arch.uniform_sliding_window == (window if windowed_layers is None else None)


def test_generate_command(tiny_model, capsys):
    code = cli_main(
        [
            "--log-level",
            "WARNING",
            "generate",
            "--model",
            str(tiny_model),
            "--dtype",
            "float32",
            "--num-kv-blocks",
            "32",
            "--max-tokens",
            "4",
            "--json",
            "The answer is",
        ]
    )
    assert code == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert '"finish_reason": "length"' in line and '"prompt": "The answer is"' in line


def test_generation_config_supplies_sampling_defaults(tiny_model, tmp_path):
    import json
    import shutil

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model, model_dir)
    config_path = model_dir / "generation_config.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    config.update(repetition_penalty=1.3, temperature=0.0, max_new_tokens=5)
    config_path.write_text(json.dumps(config))
    llm = LLM(model=str(model_dir), dtype="float32", num_blocks=32)
    defaults = llm.get_default_sampling_params()
    assert (defaults.repetition_penalty, defaults.temperature, defaults.max_tokens) == (1.3, 0, 5)
    output = llm.generate("The answer is", use_tqdm=False)[0].outputs[0]
    assert len(output.token_ids) == 5
    explicit = llm.engine.input_processor.default_sampling_params(max_tokens=3, top_p=None)
    assert explicit.max_tokens == 3 and explicit.top_p == 1.0 and explicit.repetition_penalty == 1.3
