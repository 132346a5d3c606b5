// The token-level logprob view: each generated token a span shaded by its probability (red:
// unlikely, green: likely); hovering shows its top alternatives, a click pins them.

const strictUtf8 = new TextDecoder("utf-8", { fatal: true });
const utf8 = new TextEncoder();

function tokenBytes(entry) {
  if (Array.isArray(entry.bytes)) return Uint8Array.from(entry.bytes);
  return utf8.encode(entry.token || "");
}

function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// How a token reads on its own: its text, or \xNN escapes for bytes that are only part of a
// character (the characters they make up show in the answer's text).
export function tokenLabel(entry) {
  const bytes = tokenBytes(entry);
  try {
    return { text: strictUtf8.decode(bytes), partial: false };
  } catch (_) {
    const escaped = Array.from(bytes, (b) => "\\x" + b.toString(16).padStart(2, "0")).join("");
    return { text: escaped, partial: true };
  }
}

// Whitespace and control characters made visible (for the alternatives table).
function visible(text) {
  if (text === "") return "\u2205";
  return text.replace(/[\u0000-\u0020\u007f]/g, (c) => {
    if (c === " ") return "\u2423";
    if (c === "\n") return "\\n";
    if (c === "\t") return "\\t";
    return "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0");
  });
}

function shade(probability) {
  const hue = Math.round(120 * probability); // 0 red .. 120 green
  return `hsl(${hue}, 75%, 84%)`;
}

function percent(probability) {
  if (probability >= 0.001) return (100 * probability).toFixed(1) + "%";
  return (100 * probability).toExponential(1) + "%";
}

// Append the spans of these logprob entries (choice.logprobs.content) to container.
export function appendTokens(container, entries) {
  for (const entry of entries) {
    const probability = Math.exp(entry.logprob);
    const label = tokenLabel(entry);
    const span = document.createElement("span");
    span.className = label.partial ? "token partial" : "token";
    span.textContent = label.text;
    span.style.backgroundColor = shade(probability);
    span.dataset.bytes = hex(tokenBytes(entry));
    span.dataset.logprob = String(entry.logprob);
    span.tokenEntry = entry;
    container.appendChild(span);
  }
}

let pinned = null;

function fillPopup(popup, entry) {
  popup.replaceChildren();
  const title = document.createElement("div");
  title.className = "popup-title";
  title.textContent = `p = ${percent(Math.exp(entry.logprob))}, logprob ${entry.logprob.toFixed(4)}`;
  popup.appendChild(title);
  const alternatives = entry.top_logprobs || [];
  if (alternatives.length === 0) {
    const none = document.createElement("div");
    none.className = "muted";
    none.textContent = "no alternatives (set top logprobs above 0)";
    popup.appendChild(none);
    return;
  }
  const table = document.createElement("table");
  table.id = "token-alternatives";
  const chosen = hex(tokenBytes(entry));
  for (const alternative of alternatives) {
    const row = table.insertRow();
    if (hex(tokenBytes(alternative)) === chosen) row.className = "chosen";
    const token = row.insertCell();
    const label = tokenLabel(alternative);
    const code = document.createElement("code");
    code.textContent = label.partial ? label.text : visible(label.text);
    token.appendChild(code);
    const p = Math.exp(alternative.logprob);
    row.insertCell().textContent = percent(p);
    const barCell = row.insertCell();
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = `${Math.max(1, Math.round(80 * p))}px`;
    barCell.appendChild(bar);
  }
  popup.appendChild(table);
}

function place(popup, span) {
  const box = span.getBoundingClientRect();
  popup.hidden = false;
  const width = popup.offsetWidth;
  const left = Math.min(box.left, window.innerWidth - width - 8);
  popup.style.left = `${Math.max(8, left) + window.scrollX}px`;
  popup.style.top = `${box.bottom + 6 + window.scrollY}px`;
}

function show(popup, span) {
  fillPopup(popup, span.tokenEntry);
  place(popup, span);
}

// Hover and click handling for every token span on the page (one popup element).
export function installTokenPopup(popup) {
  document.addEventListener("mouseover", (event) => {
    const span = event.target.closest && event.target.closest("span.token");
    if (span && !pinned) show(popup, span);
  });
  document.addEventListener("mouseout", (event) => {
    const span = event.target.closest && event.target.closest("span.token");
    if (span && !pinned) popup.hidden = true;
  });
  document.addEventListener("click", (event) => {
    if (popup.contains(event.target)) return;
    const span = event.target.closest && event.target.closest("span.token");
    if (pinned) pinned.classList.remove("pinned");
    if (span && span !== pinned) {
      pinned = span;
      span.classList.add("pinned");
      show(popup, span);
    } else {
      pinned = null;
      popup.hidden = true;
    }
  });
}

export function unpinTokenPopup(popup) {
  if (pinned) pinned.classList.remove("pinned");
  pinned = null;
  popup.hidden = true;
}
