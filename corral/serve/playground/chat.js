// The chat log's turns: user messages, streamed assistant answers (text, reasoning, tool calls,
// logprob tokens, usage and timing, errors) and tool results. Text goes in with textContent only.

import { appendTokens } from "./logprobs.js";

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function scrollToEnd(log) {
  log.scrollTop = log.scrollHeight;
}

export function userTurn(log, text, role = "user") {
  const turn = element("div", `turn ${role}`);
  turn.appendChild(element("div", "role", role));
  turn.appendChild(element("div", "content", text));
  log.appendChild(turn);
  scrollToEnd(log);
  return turn;
}

export function toolResultTurn(log, name, callId, text) {
  const turn = userTurn(log, text, "tool");
  turn.querySelector(".role").textContent = `tool result: ${name} (${callId})`;
  return turn;
}

function prettyArguments(text) {
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch (_) {
    return text; // still streaming, or not JSON: as written
  }
}

export class AssistantTurn {
  // onToolResult(call, text) is called when the user answers one of the turn's tool calls.
  constructor(log, { model, logprobs, onToolResult }) {
    this.log = log;
    this.onToolResult = onToolResult;
    this.content = "";
    this.reasoning = "";
    this.toolCalls = [];
    this.node = element("div", "turn assistant streaming");
    const head = element("div", "role", `assistant${model ? " \u00b7 " + model : ""}`);
    this.node.appendChild(head);
    this.reasoningBox = element("details", "reasoning");
    this.reasoningBox.hidden = true;
    this.reasoningBox.open = true;
    this.reasoningBox.appendChild(element("summary", null, "reasoning"));
    this.reasoningText = element("div", "reasoning-text");
    this.reasoningBox.appendChild(this.reasoningText);
    this.node.appendChild(this.reasoningBox);
    this.contentNode = element("div", "content");
    this.node.appendChild(this.contentNode);
    this.tokensNode = element("div", "tokens");
    this.tokensNode.hidden = true;
    this.node.appendChild(this.tokensNode);
    if (logprobs) {
      this.viewButton = element("button", "view-toggle small", "show text");
      this.viewButton.type = "button";
      this.viewButton.addEventListener("click", () => this.showTokens(this.tokensNode.hidden));
      head.appendChild(this.viewButton);
      this.showTokens(true);
    }
    this.toolCallsNode = element("div", "tool-calls");
    this.node.appendChild(this.toolCallsNode);
    this.errorNode = element("div", "error");
    this.errorNode.hidden = true;
    this.node.appendChild(this.errorNode);
    this.metaNode = element("div", "meta", "waiting for the first token\u2026");
    this.node.appendChild(this.metaNode);
    log.appendChild(this.node);
    scrollToEnd(log);
  }

  showTokens(tokens) {
    this.tokensNode.hidden = !tokens;
    this.contentNode.hidden = tokens;
    this.viewButton.textContent = tokens ? "show text" : "show tokens";
  }

  addContent(text) {
    this.content += text;
    this.contentNode.textContent = this.content;
    scrollToEnd(this.log);
  }

  addReasoning(text) {
    this.reasoning += text;
    this.reasoningBox.hidden = false;
    this.reasoningText.textContent = this.reasoning;
    scrollToEnd(this.log);
  }

  addLogprobs(entries) {
    appendTokens(this.tokensNode, entries);
    scrollToEnd(this.log);
  }

  // One streamed tool-call delta: {index, id?, function: {name?, arguments?}}.
  addToolCallDelta(delta) {
    const index = delta.index ?? this.toolCalls.length;
    let call = this.toolCalls[index];
    if (!call) {
      call = { id: "", type: "function", function: { name: "", arguments: "" } };
      call.view = this.toolCallView(call);
      this.toolCalls[index] = call;
    }
    if (delta.id) call.id = delta.id;
    const fn = delta.function || {};
    if (fn.name) call.function.name += fn.name;
    if (fn.arguments) call.function.arguments += fn.arguments;
    call.view.name.textContent = call.function.name;
    call.view.id.textContent = call.id;
    call.view.arguments.textContent = prettyArguments(call.function.arguments);
    scrollToEnd(this.log);
  }

  toolCallView(call) {
    const card = element("div", "tool-call");
    const title = element("div", "tool-call-title");
    title.appendChild(element("span", "badge", "tool call"));
    const name = element("code", "tool-call-name");
    title.appendChild(name);
    const id = element("span", "tool-call-id muted");
    title.appendChild(id);
    card.appendChild(title);
    const args = element("pre", "tool-call-arguments");
    card.appendChild(args);
    const form = element("form", "tool-result-form");
    const input = element("input", "tool-result");
    input.placeholder = "the tool's result, sent back as a tool message";
    const button = element("button", "small", "send result");
    button.type = "submit";
    form.append(input, button);
    form.hidden = true;
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      form.hidden = true;
      this.onToolResult(call, input.value);
    });
    card.appendChild(form);
    this.toolCallsNode.appendChild(card);
    return { name, id, arguments: args, form };
  }

  // The assistant message for the history (tool calls in OpenAI's shape).
  message() {
    const message = { role: "assistant", content: this.content };
    const calls = this.toolCalls.filter(Boolean);
    if (calls.length > 0) {
      message.content = this.content || null;
      message.tool_calls = calls.map((call) => ({
        id: call.id,
        type: "function",
        function: { name: call.function.name, arguments: call.function.arguments },
      }));
    }
    return message;
  }

  finish({ usage, finishReason, ttftMs, totalMs, stopped }) {
    this.node.classList.remove("streaming");
    if (stopped) this.node.classList.add("stopped");
    for (const call of this.toolCalls.filter(Boolean)) call.view.form.hidden = false;
    const parts = [];
    if (usage) {
      this.metaNode.dataset.promptTokens = usage.prompt_tokens;
      this.metaNode.dataset.completionTokens = usage.completion_tokens;
      parts.push(`prompt ${usage.prompt_tokens} tok`, `completion ${usage.completion_tokens} tok`);
      const cached = usage.prompt_tokens_details && usage.prompt_tokens_details.cached_tokens;
      if (cached) parts.push(`${cached} cached`);
    }
    if (ttftMs !== null) parts.push(`TTFT ${ttftMs.toFixed(0)} ms`);
    if (usage && totalMs > 0) {
      parts.push(`${((1000 * usage.completion_tokens) / totalMs).toFixed(1)} tok/s`);
    }
    parts.push(`total ${(totalMs / 1000).toFixed(2)} s`);
    if (finishReason) parts.push(`finish: ${finishReason}`);
    if (stopped) parts.push("stopped");
    this.metaNode.textContent = parts.join(" \u00b7 ");
    this.metaNode.title =
      "TTFT: time to the first token; tok/s: completion tokens over the whole request";
  }

  fail(message) {
    this.node.classList.remove("streaming");
    this.node.classList.add("failed");
    this.errorNode.hidden = false;
    this.errorNode.textContent = message;
    this.metaNode.textContent = "not added to the conversation";
    scrollToEnd(this.log);
  }
}
