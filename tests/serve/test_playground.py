"""The playground page at `/` in a real headless Chromium against a live server with an API
key: the page asks for the key, lists the model, streams greedy answers that equal the
non-streamed API's, shows one logprob span per generated token, the server's 400 naming the
field, structured output and tool calls. Comparisons are with the API's own answers to the same
request (greedy decoding is deterministic); no timing is asserted."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.serve.browser import browser, save_screenshot, wait_until  # noqa: F401
from tests.serve.conftest import API_KEY, auth
from tests.serve.playground_driver import (
    CANNED_REASONING_STREAM,
    HOLD_AFTER_FIRST_EVENT,
    MODEL,
    SEVERE,
    SSE_CHECK,
    STATIC_FILES,
    WEATHER_TOOL,
    YES_NO_SCHEMA,
    assistant_turns,
    by_id,
    chat,
    check,
    choose,
    finished_turn,
    part,
    reset,
    send,
    set_text,
    set_value,
    text_of,
)


@pytest.fixture(scope="module")
def playground_server(start_server):
    return start_server("--api-key", API_KEY, "--served-model-name", MODEL)


@pytest.fixture(scope="module")
def api(playground_server):
    with httpx.Client(base_url=playground_server.base_url, headers=auth(), timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def opened_page(browser, playground_server):  # noqa: F811 - the fixture imported above
    """The playground, opened with no key stored (the same window for the whole module)."""
    browser.get(playground_server.base_url + "/")
    browser.execute_script("localStorage.clear();")
    browser.get(playground_server.base_url + "/")
    wait_until(browser, lambda d: d.execute_script("return document.documentElement.dataset.ready"))
    return browser


@pytest.fixture
def page(opened_page):
    """The playground with the key typed in (whichever tests ran before) and the model listed."""
    page = opened_page
    if by_id(page, "api-key").get_attribute("value") != API_KEY:
        set_value(page, "api-key", API_KEY)
        by_id(page, "system-prompt").click()  # leaving the field reloads the models
    wait_until(page, lambda d: text_of(by_id(d, "model")) == MODEL)
    return page


# --- the tests --------------------------------------------------------------------------------


def test_page_and_static_files_open_without_key_data_needs_it(playground_server):
    base = playground_server.base_url
    page = httpx.get(base + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/playground/static/playground.js" in page.text
    for name, content_type in STATIC_FILES.items():
        response = httpx.get(f"{base}/playground/static/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"].startswith(content_type), name
    for name in ("nope.js", "routes.py", "__init__.py", "%2e%2e/routes.py"):
        assert httpx.get(f"{base}/playground/static/{name}").status_code == 404, name
    # A path that leaves the prefix (the client resolves the dots) is no open path.
    assert httpx.get(f"{base}/playground/static/../routes.py").status_code == 401
    assert httpx.get(base + "/v1/models").status_code == 401
    assert httpx.get(base + "/v1/models", headers=auth()).status_code == 200
    # The page is no API endpoint: it stays out of the OpenAPI description.
    paths = httpx.get(base + "/openapi.json", headers=auth()).json()["paths"]
    assert "/" not in paths and not any(path.startswith("/playground") for path in paths)


def test_page_asks_for_the_key_then_lists_the_model(opened_page):
    page = opened_page
    page.execute_script("localStorage.clear();")  # whatever ran before: no key stored
    page.refresh()
    banner = wait_until(page, lambda d: by_id(d, "banner").is_displayed() and by_id(d, "banner"))
    assert "HTTP 401" in banner.text and "API key" in banner.text
    set_value(page, "api-key", API_KEY)
    by_id(page, "system-prompt").click()  # leaving the field reloads the models
    wait_until(page, lambda d: text_of(by_id(d, "model")) == MODEL)
    assert not by_id(page, "banner").is_displayed()
    # The key is kept: a reload lists the model at once, with nothing in the console.
    page.get_log("browser")  # read, and so empty, the log of the keyless load (its 401)
    page.refresh()
    wait_until(page, lambda d: text_of(by_id(d, "model")) == MODEL)
    assert by_id(page, "api-key").get_attribute("value") == API_KEY
    assert not by_id(page, "banner").is_displayed()
    assert [entry for entry in page.get_log("browser") if entry["level"] in SEVERE] == []


def test_streamed_answer_equals_the_api_and_keeps_the_conversation(page, api):
    reset(page)
    set_text(page, "system-prompt", "You answer briefly.")
    set_value(page, "temperature", "0")
    set_value(page, "max-tokens", "24")
    settings = {"temperature": 0.0, "max_tokens": 24}
    messages = [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "How many apples are left?"},
    ]
    turn = send(page, messages[1]["content"])
    expected = chat(api, messages, **settings)
    answer = text_of(part(turn, ".content"))
    assert answer == expected["choices"][0]["message"]["content"]
    meta = part(turn, ".meta")
    assert meta.get_attribute("data-completion-tokens") == str(
        expected["usage"]["completion_tokens"]
    )
    assert meta.get_attribute("data-prompt-tokens") == str(expected["usage"]["prompt_tokens"])
    assert "TTFT" in meta.text and "tok/s" in meta.text
    # A second message is sent with the whole conversation, the first answer included.
    messages += [
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "And the train?"},
    ]
    turn = send(page, "And the train?")
    assert (
        text_of(part(turn, ".content"))
        == chat(api, messages, **settings)["choices"][0]["message"]["content"]
    )
    # Clear chat: the next request holds only the new message.
    by_id(page, "clear").click()
    assert assistant_turns(page) == []
    turn = send(page, "And the train?")
    fresh = [messages[0], messages[-1]]
    assert (
        text_of(part(turn, ".content"))
        == chat(api, fresh, **settings)["choices"][0]["message"]["content"]
    )


def test_logprob_view_has_one_span_per_generated_token(page, api):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    reset(page)
    set_value(page, "temperature", "0")
    set_value(page, "max-tokens", "16")
    check(page, "logprobs-enabled", True)
    set_value(page, "top-logprobs", "3")
    question = "Tell me about the fox."
    turn = send(page, question)
    expected = chat(
        api,
        [{"role": "user", "content": question}],
        temperature=0.0,
        max_tokens=16,
        logprobs=True,
        top_logprobs=3,
    )
    choice = expected["choices"][0]
    spans = turn.find_elements(By.CSS_SELECTOR, ".tokens span.token")
    completion_tokens = int(part(turn, ".meta").get_attribute("data-completion-tokens"))
    assert len(spans) == completion_tokens == expected["usage"]["completion_tokens"]
    # The spans' bytes make up the answer (a token may hold part of a character: its bytes).
    answer = text_of(part(turn, ".content"))
    assert answer == choice["message"]["content"]
    token_bytes = b"".join(bytes.fromhex(span.get_attribute("data-bytes")) for span in spans)
    assert token_bytes.decode("utf-8", errors="replace") == answer
    expected_entries = choice["logprobs"]["content"]
    for span, entry in zip(spans, expected_entries, strict=True):
        assert bytes.fromhex(span.get_attribute("data-bytes")) == bytes(entry["bytes"])
        assert float(span.get_attribute("data-logprob")) == pytest.approx(
            entry["logprob"], abs=1e-4
        )
        if "partial" not in span.get_attribute("class"):
            assert text_of(span) == bytes(entry["bytes"]).decode()
    # Hovering a token shows its top 3 alternatives; a click pins them.
    popup = by_id(page, "token-popup")
    ActionChains(page).move_to_element(spans[1]).perform()
    wait_until(page, lambda d: popup.is_displayed())
    rows = popup.find_elements(By.CSS_SELECTOR, "#token-alternatives tr")
    assert len(rows) == 3
    assert len(popup.find_elements(By.CSS_SELECTOR, "#token-alternatives tr.chosen")) == 1
    spans[2].click()
    ActionChains(page).move_to_element(by_id(page, "user-input")).perform()
    assert popup.is_displayed() and "pinned" in spans[2].get_attribute("class")
    save_screenshot(page, "playground-logprobs")
    by_id(page, "chat-log").click()  # a click elsewhere unpins
    assert not popup.is_displayed()


GOOD_SETTINGS = {"temperature": "0", "max-tokens": "8"}


@pytest.mark.parametrize(
    ("element_id", "value", "field", "body"),
    [
        ("temperature", "-1", "temperature", {"temperature": -1}),
        ("max-tokens", "0", "max_tokens", {"max_tokens": 0}),
    ],
)
def test_a_bad_setting_shows_the_servers_400(page, api, element_id, value, field, body):
    reset(page)
    for good_id, good_value in GOOD_SETTINGS.items():
        set_value(page, good_id, good_value)
    set_value(page, element_id, value)
    turn = send(page, "Hello")
    refused = api.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}], **body}
    )
    assert refused.status_code == 400
    message = refused.json()["error"]["message"]
    assert field in message
    error = part(turn, ".error")
    assert error.is_displayed()
    assert text_of(error) == f"HTTP 400 ({field}): {message}"
    assert "failed" in turn.get_attribute("class")
    # The message was not kept in the conversation: it is back in the input, to send again.
    assert by_id(page, "user-input").get_attribute("value") == "Hello"
    set_value(page, element_id, GOOD_SETTINGS[element_id])
    turn = send(page, "Hello")
    expected = chat(api, [{"role": "user", "content": "Hello"}], temperature=0.0, max_tokens=8)
    assert text_of(part(turn, ".content")) == expected["choices"][0]["message"]["content"]


def test_structured_output_json_object_and_json_schema(page, api):
    reset(page)
    set_value(page, "temperature", "0")
    set_value(page, "max-tokens", "40")
    choose(page, "response-format", "json_object")
    question = "Answer in JSON."
    turn = send(page, question)
    body = json.loads(text_of(by_id(page, "last-request")))
    assert body["response_format"] == {"type": "json_object"}
    # The random model fills a JSON string until max_tokens: the same text as the API's.
    expected = chat(
        api,
        [{"role": "user", "content": question}],
        temperature=0.0,
        max_tokens=40,
        response_format={"type": "json_object"},
    )
    answer = text_of(part(turn, ".content"))
    assert answer == expected["choices"][0]["message"]["content"]
    assert answer.startswith("{")
    # A schema with an enum leaves the model nothing to ramble in: the answer is whole JSON.
    choose(page, "response-format", "json_schema")
    set_value(page, "schema-name", "verdict")
    set_text(page, "json-schema", json.dumps(YES_NO_SCHEMA, indent=2))
    set_value(page, "max-tokens", "60")
    by_id(page, "clear").click()
    turn = send(page, question)
    answer = text_of(part(turn, ".content"))
    assert json.loads(answer)["answer"] in ("yes", "no")
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "verdict", "schema": YES_NO_SCHEMA},
    }
    assert json.loads(text_of(by_id(page, "last-request")))["response_format"] == response_format
    expected = chat(
        api,
        [{"role": "user", "content": question}],
        temperature=0.0,
        max_tokens=60,
        response_format=response_format,
    )
    assert answer == expected["choices"][0]["message"]["content"]
    # A schema that is not JSON is caught on the page, before any request.
    set_text(page, "json-schema", "{not json")
    set_value(page, "user-input", question)
    by_id(page, "send").click()
    banner = wait_until(page, lambda d: by_id(d, "banner").is_displayed() and by_id(d, "banner"))
    assert banner.text.startswith("Settings: The JSON schema is not valid JSON")


def test_tool_call_is_shown_and_its_result_goes_back(page, api):
    from selenium.webdriver.common.by import By

    reset(page)
    set_value(page, "temperature", "0")
    set_value(page, "max-tokens", "80")
    check(page, "tools-enabled", True)
    set_text(page, "tools-json", json.dumps([WEATHER_TOOL]))
    choose(page, "tool-choice", "required")
    check(page, "parallel-tool-calls", False)
    question = "What is the weather in Paris?"
    turn = send(page, question)
    settings = {
        "temperature": 0.0,
        "max_tokens": 80,
        "tools": [WEATHER_TOOL],
        "tool_choice": "required",
        "parallel_tool_calls": False,
    }
    messages = [{"role": "user", "content": question}]
    expected = chat(api, messages, **settings)["choices"][0]["message"]
    (expected_call,) = expected["tool_calls"]
    cards = turn.find_elements(By.CSS_SELECTOR, ".tool-call")
    assert len(cards) == 1
    assert text_of(part(cards[0], ".tool-call-name")) == "get_weather"
    arguments = json.loads(text_of(part(cards[0], ".tool-call-arguments")))
    assert arguments == json.loads(expected_call["function"]["arguments"])
    # Answering the call sends a tool message; the model's next answer is the API's to the same
    # conversation (the template writes no call ids into the prompt).
    form = part(cards[0], ".tool-result-form")
    part(form, "input").send_keys("18 degrees, sunny")
    choose(page, "tool-choice", "none")
    before = len(assistant_turns(page))
    part(form, "button").click()
    turn = finished_turn(page, before)
    messages += [
        {"role": "assistant", "content": expected["content"], "tool_calls": [expected_call]},
        {"role": "tool", "tool_call_id": expected_call["id"], "content": "18 degrees, sunny"},
    ]
    settings["tool_choice"] = "none"
    followup = chat(api, messages, **settings)["choices"][0]["message"]
    assert text_of(part(turn, ".content")) == (followup["content"] or "")
    save_screenshot(page, "playground-tool-call")


# The page's fetch, wrapped: a chat answer delivers its first event (the role chunk) and then
# nothing more, so that the Stop button meets a stream still open whatever the model's speed.


def test_stop_aborts_the_stream(page):
    reset(page)
    page.execute_script(HOLD_AFTER_FIRST_EVENT)
    try:
        set_value(page, "user-input", "Count to a hundred.")
        by_id(page, "send").click()
        stop = wait_until(page, lambda d: by_id(d, "stop").is_enabled() and by_id(d, "stop"))
        (turn,) = assistant_turns(page)
        assert "streaming" in turn.get_attribute("class")
        stop.click()
        wait_until(page, lambda d: "stopped" in turn.get_attribute("class"))
        assert "streaming" not in turn.get_attribute("class")
        assert part(turn, ".meta").text.endswith("stopped")
        assert by_id(page, "send").is_enabled() and not by_id(page, "stop").is_enabled()
    finally:
        page.execute_script("window.fetch = window.realFetch;")


def test_sse_parser_takes_any_chunking():
    """sse.js under node: the same events whatever the byte chunks (split mid-line, mid-CRLF,
    mid-character), comments and other fields skipped, multi-line data joined."""
    import shutil
    import subprocess
    from pathlib import Path

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    module = Path(__file__).parents[2] / "corral/serve/playground/sse.js"
    script = SSE_CHECK % module.resolve().as_uri()
    result = subprocess.run(
        [node, "--input-type=module", "-e", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    (events,) = output["distinct"]
    assert json.loads(events) == [
        '{"a": 1}',
        "line one\nline two",
        '{"b": "é日"}',
        "p\nq",
        "[DONE]",
    ]
    # chatChunks: JSON chunks up to [DONE]; an error event is thrown as the API's error.
    assert output["chunks"] == {
        "done": [{"a": 1}],
        "failed": [{"a": 1}, "Error 200 top_k: boom"],
    }


# A canned stream in the shape a server with --reasoning-parser sends (the tiny model of this
# module's server has no reasoning parser): reasoning deltas, then content deltas.


def test_reasoning_shows_apart_from_the_answer(page):
    reset(page)
    page.execute_script(CANNED_REASONING_STREAM)
    try:
        turn = send(page, "How many apples are left?")
    finally:
        page.execute_script("window.fetch = window.realFetch;")
    reasoning = part(turn, ".reasoning")
    assert reasoning.is_displayed()
    assert text_of(part(turn, ".reasoning-text")) == "Twelve apples, three eaten."
    assert text_of(part(turn, ".content")) == "Nine are left."
    assert "finish: stop" in part(turn, ".meta").text
