"""What the playground tests drive the page with (tests/serve/test_playground.py): the model's
name, tools and schemas, element helpers, and the scripts injected into the page or run under
node."""

from __future__ import annotations

import httpx

from tests.serve.browser import wait_until

MODEL = "tiny"
SEVERE = ("SEVERE", "ERROR")
STATIC_FILES = {
    "page.html": "text/html",
    "playground.js": "text/javascript",
    "sse.js": "text/javascript",
    "settings.js": "text/javascript",
    "chat.js": "text/javascript",
    "logprobs.js": "text/javascript",
    "playground.css": "text/css",
}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["unit"],
            "additionalProperties": False,
        },
    },
}
YES_NO_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"enum": ["yes", "no"]}},
    "required": ["answer"],
    "additionalProperties": False,
}


def chat(api: httpx.Client, messages: list[dict], **fields) -> dict:
    """The non-streamed answer of the API to these messages (the model named MODEL)."""
    response = api.post(
        "/v1/chat/completions", json={"model": MODEL, "messages": messages, **fields}
    )
    assert response.status_code == 200, response.text
    return response.json()


# --- the page, driven -------------------------------------------------------------------------


def by_id(driver, element_id: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id)


def text_of(element) -> str:
    """The element's whole text (hidden or not, whitespace as is)."""
    return element.get_attribute("textContent")


def set_value(driver, element_id: str, value: str) -> None:
    """Type value into an input (cleared first)."""
    element = by_id(driver, element_id)
    element.clear()
    if value:
        element.send_keys(value)


def set_text(driver, element_id: str, value: str) -> None:
    """Set a textarea's text at once (typing long JSON key by key is slow)."""
    driver.execute_script("arguments[0].value = arguments[1];", by_id(driver, element_id), value)


def choose(driver, element_id: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(by_id(driver, element_id)).select_by_value(value)


def check(driver, element_id: str, on: bool) -> None:
    box = by_id(driver, element_id)
    if box.is_selected() != on:
        box.click()


def assistant_turns(driver) -> list:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, "#chat-log .turn.assistant")


def finished_turn(driver, count_before: int):
    """Wait for turn number count_before + 1 to finish; return it."""

    def done(d):
        turns = assistant_turns(d)
        if len(turns) <= count_before or "streaming" in turns[-1].get_attribute("class"):
            return None
        return turns[-1] if by_id(d, "stop").get_attribute("disabled") else None

    return wait_until(driver, done, 60)


def send(driver, text: str):
    """Type a message, send it with the button, and return the finished assistant turn."""
    before = len(assistant_turns(driver))
    set_value(driver, "user-input", text)
    by_id(driver, "send").click()
    return finished_turn(driver, before)


def part(turn, css: str):
    from selenium.webdriver.common.by import By

    return turn.find_element(By.CSS_SELECTOR, css)


def reset(driver) -> None:
    """An empty chat and the default settings."""
    by_id(driver, "clear").click()
    by_id(driver, "reset-sampling").click()
    set_text(driver, "system-prompt", "")
    choose(driver, "response-format", "off")
    check(driver, "tools-enabled", False)
    check(driver, "logprobs-enabled", False)


HOLD_AFTER_FIRST_EVENT = """
window.realFetch = window.realFetch || window.fetch;
window.fetch = async (url, options) => {
  const response = await window.realFetch(url, options);
  if (!String(url).endsWith("/v1/chat/completions") || !response.ok) return response;
  const reader = response.body.getReader();
  let text = "";
  while (!text.includes("\\n\\n")) {
    const { value } = await reader.read();
    text += new TextDecoder().decode(value);
  }
  const first = text.slice(0, text.indexOf("\\n\\n") + 2);
  const body = new ReadableStream({
    start(controller) {
      controller.enqueue(new TextEncoder().encode(first));
      options.signal.addEventListener("abort", () => {
        controller.error(new DOMException("stopped", "AbortError"));
        reader.cancel();
      });
    },
  });
  return new Response(body, { status: response.status, headers: response.headers });
};
"""

SSE_CHECK = """
import { sseData, chatChunks } from "%s";
const text = 'data: {"a": 1}\\r\\n\\r\\n: comment\\n\\ndata: line one\\ndata:line two\\n\\n' +
  'event: x\\ndata: {"b": "\\u00e9\\u65e5"}\\n\\ndata: p\\r\\ndata: q\\r\\n\\r\\n' +
  'data: [DONE]\\n\\n';
const bytes = new TextEncoder().encode(text);
const results = [];
for (let size = 1; size <= bytes.length; size += 1) {
  let position = 0;
  const response = { status: 200, body: { getReader: () => ({
    read: async () => position >= bytes.length ? { done: true } :
      { done: false, value: bytes.slice(position, (position += size)) },
    releaseLock() {},
  }) } };
  const events = [];
  for await (const data of sseData(response)) events.push(data);
  results.push(JSON.stringify(events));
}
function reply(text) {
  let sent = false;
  return { status: 200, body: { getReader: () => ({
    read: async () => sent ? { done: true } :
      (sent = true, { done: false, value: new TextEncoder().encode(text) }),
    releaseLock() {},
  }) } };
}
async function collect(text) {
  const chunks = [];
  try { for await (const chunk of chatChunks(reply(text))) chunks.push(chunk); }
  catch (error) { chunks.push(`${error.name} ${error.status} ${error.param}: ${error.message}`); }
  return chunks;
}
const done = await collect('data: {"a": 1}\\n\\ndata: [DONE]\\n\\ndata: {"b": 2}\\n\\n');
const failed = await collect(
  'data: {"a": 1}\\n\\ndata: {"error": {"message": "boom", "param": "top_k"}}\\n\\n');
const chunks = { done, failed };
console.log(JSON.stringify({ distinct: [...new Set(results)], chunks }));
"""

CANNED_REASONING_STREAM = """
window.realFetch = window.realFetch || window.fetch;
window.fetch = async (url, options) => {
  if (!String(url).endsWith("/v1/chat/completions")) return window.realFetch(url, options);
  const deltas = [{ role: "assistant", content: "" }, { reasoning_content: "Twelve apples, " },
    { reasoning_content: "three eaten." }, { content: "Nine " }, { content: "are left." }];
  const events = deltas.map((delta, index) => JSON.stringify({ object: "chat.completion.chunk",
    choices: [{ index: 0, delta, finish_reason: index === deltas.length - 1 ? "stop" : null }] }));
  events.push(JSON.stringify({ choices: [], usage: { prompt_tokens: 7, completion_tokens: 9 } }));
  const text = events.map((event) => `data: ${event}\\n\\n`).join("") + "data: [DONE]\\n\\n";
  return new Response(text, { status: 200, headers: { "Content-Type": "text/event-stream" } });
};
"""
