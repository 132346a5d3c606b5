// A server-sent-event stream read with fetch (so the API key goes in a header), reconnecting
// after errors. onFrame gets each parsed frame; onStatus gets "live", "retrying", "key" (the
// server wants an API key: 401) or "stopped".
"use strict";

const KEY_STORAGE = "corral.apiKey";

function storedKey() {
  try { return localStorage.getItem(KEY_STORAGE) || ""; } catch (e) { return ""; }
}

function storeKey(key) {
  try { localStorage.setItem(KEY_STORAGE, key); } catch (e) { /* private mode */ }
}

function authHeaders() {
  const key = storedKey();
  return key ? { Authorization: "Bearer " + key } : {};
}

// Split a text buffer into complete SSE events; returns [dataPayloads, rest].
function splitEvents(buffer) {
  const payloads = [];
  let boundary;
  while ((boundary = buffer.indexOf("\n\n")) >= 0) {
    const block = buffer.slice(0, boundary);
    buffer = buffer.slice(boundary + 2);
    const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart());
    if (data.length) payloads.push(data.join("\n"));
  }
  return [payloads, buffer];
}

class FrameStream {
  constructor(url, onFrame, onStatus) {
    this.url = url;
    this.onFrame = onFrame;
    this.onStatus = onStatus;
    this.controller = null;
    this.retryMs = 2000;
    this.stopped = false;
  }

  start() {
    this.stopped = false;
    this._connect();
  }

  stop() {
    this.stopped = true;
    if (this.controller) this.controller.abort();
    this.onStatus("stopped");
  }

  async _connect() {
    if (this.stopped) return;
    this.controller = new AbortController();
    try {
      const response = await fetch(this.url, { headers: authHeaders(), signal: this.controller.signal });
      if (response.status === 401) { this.onStatus("key"); return; }
      if (!response.ok) throw new Error("HTTP " + response.status);
      this.onStatus("live");
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        const [payloads, rest] = splitEvents(buffer);
        buffer = rest;
        for (const payload of payloads) {
          try { this.onFrame(JSON.parse(payload)); } catch (error) { console.error("bad frame", error); }
        }
      }
    } catch (error) {
      if (this.stopped) return;
    }
    if (this.stopped) return;
    this.onStatus("retrying");
    setTimeout(() => this._connect(), this.retryMs);
  }
}
