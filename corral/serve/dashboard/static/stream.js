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

// ----- what every dashboard page shares: the connection pill, the key form, text updates --

const $ = (id) => document.getElementById(id);

function setText(id, text) {
  const element = $(id);
  if (element.textContent !== String(text)) element.textContent = text;
}

function integer(value) {
  return value == null ? "-" : Math.round(value).toString();
}

function setConnection(text, className) {
  const element = $("connection");
  element.textContent = text;
  element.className = "pill " + className;
}

// Stream url's frames into onFrame, showing the connection state and asking for the API key
// (form #key-form, input #api-key) when the server refuses without one.
function connectPage(url, onFrame) {
  const onStatus = (status) => {
    if (status === "live") setConnection("live", "state-ok");
    else if (status === "retrying") setConnection("reconnecting", "state-off");
    else if (status === "key") {
      setConnection("needs API key", "state-bad");
      $("key-form").hidden = false;
      $("key-message").textContent = storedKey() ? "the key was refused" : "";
    } else setConnection(status, "state-off");
  };
  const stream = new FrameStream(url, (frame) => {
    onFrame(frame);
    if (frame.interval_ms != null) setText("interval", frame.interval_ms + " ms");
    window.corralDashboard.frames += 1;
    window.corralDashboard.lastFrame = frame;
  }, onStatus);
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    storeKey($("api-key").value.trim());
    $("key-form").hidden = true;
    stream.start();
  });
  stream.start();
  return stream;
}

window.corralDashboard = { frames: 0, lastFrame: null };
