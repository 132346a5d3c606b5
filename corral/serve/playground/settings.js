// The settings panel -> the fields of a /v1/chat/completions body. An empty field means "the
// server's default": it is left out of the body, never sent as null or 0. The server checks the
// values (its 400 names the field); here only text that must be JSON is parsed.

const $ = (id) => document.getElementById(id);

// [element id, body field, parse]
const NUMBER_FIELDS = [
  ["temperature", "temperature", Number],
  ["top-p", "top_p", Number],
  ["top-k", "top_k", Number],
  ["min-p", "min_p", Number],
  ["max-tokens", "max_tokens", Number],
  ["seed", "seed", Number],
  ["presence-penalty", "presence_penalty", Number],
  ["frequency-penalty", "frequency_penalty", Number],
  ["repetition-penalty", "repetition_penalty", Number],
];

// A mistake in the settings found before sending (the message names the setting).
export class SettingsError extends Error {}

function parseJson(id, what) {
  const text = $(id).value.trim();
  if (!text) throw new SettingsError(`${what} is empty`);
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new SettingsError(`${what} is not valid JSON: ${error.message}`);
  }
}

function samplingFields(body) {
  for (const [id, field, parse] of NUMBER_FIELDS) {
    const element = $(id);
    const text = element.value.trim();
    if (text === "") {
      // A number input holds "" for text that is no number: say so rather than drop it.
      if (element.validity && element.validity.badInput) {
        throw new SettingsError(`${field}: not a number`);
      }
      continue;
    }
    body[field] = parse(text);
  }
  const stops = $("stop")
    .value.split("\n")
    .filter((line) => line !== "");
  if (stops.length > 0) body.stop = stops;
}

function responseFormat(body) {
  const kind = $("response-format").value;
  if (kind === "json_object") {
    body.response_format = { type: "json_object" };
  } else if (kind === "json_schema") {
    const schema = parseJson("json-schema", "The JSON schema");
    const name = $("schema-name").value.trim() || "answer";
    body.response_format = { type: "json_schema", json_schema: { name, schema } };
  }
}

function tools(body) {
  if (!$("tools-enabled").checked) return;
  let list = parseJson("tools-json", "The tools");
  if (!Array.isArray(list)) list = [list];
  // Bare function descriptions ({name, parameters}) get OpenAI's wrapper.
  body.tools = list.map((tool) =>
    tool && tool.type === undefined && tool.name !== undefined
      ? { type: "function", function: tool }
      : tool,
  );
  const choice = $("tool-choice").value;
  if (choice === "function") {
    const name = $("tool-choice-name").value.trim();
    if (!name) throw new SettingsError("tool_choice: type the function's name");
    body.tool_choice = { type: "function", function: { name } };
  } else if (choice !== "default") {
    body.tool_choice = choice;
  }
  if (!$("parallel-tool-calls").checked) body.parallel_tool_calls = false;
}

function logprobs(body) {
  if (!$("logprobs-enabled").checked) return;
  body.logprobs = true;
  const text = $("top-logprobs").value.trim();
  if (text !== "") body.top_logprobs = Number(text);
}

// The request body for these messages with the panel's settings (throws SettingsError).
export function buildRequest(messages) {
  const body = { messages, stream: true, stream_options: { include_usage: true } };
  const model = $("model").value;
  if (model) body.model = model;
  samplingFields(body);
  responseFormat(body);
  tools(body);
  logprobs(body);
  return body;
}

// Show only the inputs of the chosen options.
export function syncSettingsVisibility() {
  const format = $("response-format").value;
  $("json-schema-fields").hidden = format !== "json_schema";
  $("tools-fields").hidden = !$("tools-enabled").checked;
  $("tool-choice-name").hidden = $("tool-choice").value !== "function";
  $("top-logprobs-field").hidden = !$("logprobs-enabled").checked;
}

export function installSettings() {
  for (const id of ["response-format", "tools-enabled", "tool-choice", "logprobs-enabled"]) {
    $(id).addEventListener("change", syncSettingsVisibility);
  }
  $("reset-sampling").addEventListener("click", () => {
    for (const [id] of NUMBER_FIELDS) $(id).value = "";
    $("stop").value = "";
  });
  syncSettingsVisibility();
}
