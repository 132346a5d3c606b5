// The playground page: API key, model list, the conversation and its streamed answers.

import { AssistantTurn, toolResultTurn, userTurn } from "./chat.js";
import { installTokenPopup, unpinTokenPopup } from "./logprobs.js";
import { buildRequest, installSettings, SettingsError } from "./settings.js";
import { ApiError, chatChunks, responseError } from "./sse.js";

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "corral.apiKey"; // shared with the dashboard page

// localStorage, or nothing where the browser refuses it (storage disabled, private modes).
function stored(name) {
  try {
    return localStorage.getItem(name) || "";
  } catch (_) {
    return "";
  }
}

function store(name, value) {
  try {
    localStorage.setItem(name, value);
  } catch (_) {
    // kept for this page's life only
  }
}

const state = {
  history: [], // the conversation sent with each request (without the system prompt)
  controller: null, // the AbortController of the request in flight
  epoch: 0, // bumped by "clear": an answer of an older conversation leaves the history alone
};

function apiKey() {
  return $("api-key").value.trim();
}

function headers(json) {
  const result = {};
  if (json) result["Content-Type"] = "application/json";
  const key = apiKey();
  if (key) result.Authorization = `Bearer ${key}`;
  return result;
}

function describe(error) {
  if (error instanceof ApiError) {
    const param = error.param ? ` (${error.param})` : "";
    let text = `HTTP ${error.status}${param}: ${error.message}`;
    if (error.status === 401) {
      text += " \u2014 this server needs an API key: type it in the API key field at the top.";
    }
    return text;
  }
  if (error instanceof SettingsError) return `Settings: ${error.message}`;
  if (error instanceof TypeError) return `Could not reach the server: ${error.message}`;
  return String(error && error.message ? error.message : error);
}

function banner(text) {
  $("banner").hidden = !text;
  $("banner").textContent = text || "";
}

async function loadModels() {
  const select = $("model");
  const previous = select.value || stored("corral.model");
  try {
    const response = await fetch("/v1/models", { headers: headers(false) });
    if (!response.ok) throw await responseError(response);
    const models = (await response.json()).data || [];
    select.replaceChildren();
    for (const model of models) {
      const option = document.createElement("option");
      option.value = model.id;
      option.textContent = model.parent ? `${model.id} (LoRA on ${model.parent})` : model.id;
      select.appendChild(option);
    }
    if (models.some((model) => model.id === previous)) select.value = previous;
    const base = models.find((model) => !model.parent);
    $("server-info").textContent =
      `${models.length} model${models.length === 1 ? "" : "s"}` +
      (base && base.max_model_len ? ` \u00b7 context ${base.max_model_len} tokens` : "");
    banner("");
  } catch (error) {
    $("server-info").textContent = "no models";
    banner(`Could not list the models. ${describe(error)}`);
  }
}

function requestMessages() {
  const messages = [];
  const system = $("system-prompt").value;
  if (system.trim()) messages.push({ role: "system", content: system });
  return messages.concat(state.history);
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
  $("status").textContent = busy ? "generating\u2026" : "";
}

// Send the conversation plus `added` (the new user or tool messages) and stream the answer. On
// failure the added messages are taken back out (and returned to the caller's undo).
async function generate(added, undo) {
  let body;
  try {
    body = buildRequest(requestMessages().concat(added));
  } catch (error) {
    banner(describe(error));
    undo();
    return;
  }
  banner("");
  state.history.push(...added);
  $("last-request").textContent = JSON.stringify(body, null, 2);
  const controller = new AbortController();
  state.controller = controller;
  setBusy(true);
  const turn = new AssistantTurn($("chat-log"), {
    model: body.model,
    logprobs: Boolean(body.logprobs),
    onToolResult: sendToolResult,
  });
  const epoch = state.epoch;
  const started = performance.now();
  let firstAt = null;
  let usage = null;
  let finishReason = null;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers(true),
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) throw await responseError(response);
    for await (const chunk of chatChunks(response)) {
      if (chunk.usage) usage = chunk.usage;
      for (const choice of chunk.choices || []) {
        const delta = choice.delta || {};
        const entries = choice.logprobs && choice.logprobs.content;
        const produced = delta.content || delta.reasoning_content || delta.tool_calls || entries;
        if (produced && firstAt === null) firstAt = performance.now();
        if (delta.reasoning_content) turn.addReasoning(delta.reasoning_content);
        if (delta.content) turn.addContent(delta.content);
        for (const call of delta.tool_calls || []) turn.addToolCallDelta(call);
        if (entries && entries.length) turn.addLogprobs(entries);
        if (choice.finish_reason) finishReason = choice.finish_reason;
      }
    }
    if (epoch === state.epoch) state.history.push(turn.message());
    turn.finish(timing({ usage, finishReason, started, firstAt }));
  } catch (error) {
    if (epoch !== state.epoch) {
      // cleared meanwhile: nothing to keep
    } else if (controller.signal.aborted) {
      // Stopped: what came so far stays in the conversation.
      if (turn.content || turn.toolCalls.length) state.history.push(turn.message());
      turn.finish({ ...timing({ usage, finishReason, started, firstAt }), stopped: true });
    } else {
      state.history.splice(state.history.length - added.length, added.length);
      turn.fail(describe(error));
      undo();
    }
  } finally {
    if (state.controller === controller) {
      state.controller = null;
      setBusy(false);
    }
  }
}

function timing({ usage, finishReason, started, firstAt }) {
  const now = performance.now();
  return {
    usage,
    finishReason,
    ttftMs: firstAt === null ? null : firstAt - started,
    totalMs: now - started,
    stopped: false,
  };
}

function sendMessage() {
  const input = $("user-input");
  const text = input.value;
  if (!text.trim() || state.controller) return;
  input.value = "";
  const turn = userTurn($("chat-log"), text);
  generate([{ role: "user", content: text }], () => {
    turn.classList.add("failed");
    if (!input.value) input.value = text; // to send again once the settings are fixed
  });
}

function sendToolResult(call, text) {
  if (state.controller) return;
  const turn = toolResultTurn($("chat-log"), call.function.name, call.id, text);
  generate([{ role: "tool", tool_call_id: call.id, content: text }], () => {
    turn.classList.add("failed");
  });
}

function clearChat() {
  if (state.controller) state.controller.abort();
  state.epoch += 1;
  state.history = [];
  $("chat-log").replaceChildren();
  unpinTokenPopup($("token-popup"));
  banner("");
}

function install() {
  const keyInput = $("api-key");
  keyInput.value = stored(KEY_STORAGE);
  keyInput.addEventListener("input", () => store(KEY_STORAGE, apiKey()));
  keyInput.addEventListener("change", loadModels);
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    loadModels();
  });
  $("model").addEventListener("change", () => store("corral.model", $("model").value));
  $("reload-models").addEventListener("click", loadModels);
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    sendMessage();
  });
  $("user-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      sendMessage();
    }
  });
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  $("clear").addEventListener("click", clearChat);
  installSettings();
  installTokenPopup($("token-popup"));
  setBusy(false);
  document.documentElement.dataset.ready = "true";
  loadModels();
}

install();
