// Server-sent events from a fetch() response, read with the stream API (no EventSource: it
// cannot POST nor send an Authorization header). Yields the data of each event, the lines of a
// multi-line data field joined with "\n"; comments and other fields are skipped.

export async function* sseData(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let dataLines = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      buffer += done ? decoder.decode() : decoder.decode(value, { stream: true });
      // Complete lines only; a partial line waits for the next read.
      let newline;
      while ((newline = buffer.search(/\r\n|\r|\n/)) >= 0) {
        // A final "\r" may be the first half of a "\r\n" split between reads.
        if (!done && newline === buffer.length - 1 && buffer[newline] === "\r") break;
        const line = buffer.slice(0, newline);
        const width = buffer.startsWith("\r\n", newline) ? 2 : 1;
        buffer = buffer.slice(newline + width);
        if (line === "") {
          if (dataLines.length > 0) {
            yield dataLines.join("\n");
            dataLines = [];
          }
        } else if (line.startsWith("data:")) {
          const value = line.slice(5);
          dataLines.push(value.startsWith(" ") ? value.slice(1) : value);
        }
      }
      if (done) break;
    }
    if (buffer.startsWith("data:")) {
      const value = buffer.slice(5);
      dataLines.push(value.startsWith(" ") ? value.slice(1) : value);
    }
    if (dataLines.length > 0) yield dataLines.join("\n");
  } finally {
    reader.releaseLock();
  }
}

// The chunks of an OpenAI-style stream: each event parsed as JSON, up to "data: [DONE]". An
// error event ({"error": {...}}) is thrown as an ApiError.
export async function* chatChunks(response) {
  for await (const data of sseData(response)) {
    if (data === "[DONE]") return;
    const chunk = JSON.parse(data);
    if (chunk && chunk.error) throw new ApiError(response.status, chunk.error);
    yield chunk;
  }
}

// An OpenAI-style error: {message, type, param, code} and the HTTP status.
export class ApiError extends Error {
  constructor(status, error) {
    super(error && error.message ? error.message : `HTTP ${status}`);
    this.status = status;
    this.param = error ? error.param : null;
    this.code = error ? error.code : null;
  }
}

// The ApiError of a failed response (its JSON error body, or its text when it is not JSON).
export async function responseError(response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    if (body && body.error) return new ApiError(response.status, body.error);
    if (body && body.detail) return new ApiError(response.status, { message: String(body.detail) });
  } catch (_) {
    // not JSON: fall through
  }
  return new ApiError(response.status, { message: text.trim() || response.statusText });
}
