"""A stub OpenAI server on loopback (aiohttp, in a background thread) whose answers are scripted
by the prompt text (completions) or the last user message (chat):

    ok:N:TTFT_MS:GAP_MS   N tokens, the first after TTFT_MS, then one every GAP_MS
    nousage:N             N tokens, no usage chunk even when asked
    http500               500 with an OpenAI error body
    cut:K                 K tokens, then the connection is dropped mid-stream
    errorevent            one token, then an error event, then [DONE]
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

from aiohttp import web


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


class StubServer:
    def __init__(self) -> None:
        self.received: list[tuple[float, str, dict[str, Any]]] = []
        self.authorizations: list[str | None] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.base_url = ""

    def start(self) -> StubServer:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the stub server did not start")
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)
        runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        port = runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}"
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "stub-model"}]})

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.received.append((time.perf_counter(), "completions", body))
        self.authorizations.append(request.headers.get("Authorization"))
        return await self._answer(request, body, str(body["prompt"]), is_chat=False)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.received.append((time.perf_counter(), "chat", body))
        return await self._answer(request, body, body["messages"][-1]["content"], is_chat=True)

    async def _answer(
        self, request: web.Request, body: dict[str, Any], command: str, is_chat: bool
    ) -> web.StreamResponse:
        kind, *params = command.split(":")
        if kind == "http500":
            error = {"error": {"message": "stub failure", "type": "internal"}}
            return web.json_response(error, status=500)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)

        def chunk(text: str, finish: str | None = None) -> bytes:
            if is_chat:
                choice = {"index": 0, "delta": {"content": text}, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": text, "finish_reason": finish}
            return _sse({"choices": [choice]})

        if is_chat:
            delta = {"role": "assistant", "content": ""}
            await response.write(_sse({"choices": [{"index": 0, "delta": delta}]}))
        num_tokens = int(params[0]) if params else 1
        ttft_s = int(params[1]) / 1e3 if len(params) > 1 else 0.0
        gap_s = int(params[2]) / 1e3 if len(params) > 2 else 0.0
        await asyncio.sleep(ttft_s)
        for index in range(num_tokens):
            if index:
                await asyncio.sleep(gap_s)
            last = index == num_tokens - 1
            await response.write(chunk(f"w{index} ", "length" if last else None))
            if kind == "cut" and last:
                request.transport.close()  # drop the connection without ending the body
                return response
        if kind == "errorevent":
            await response.write(_sse({"error": {"message": "stub died", "type": "internal"}}))
        wants_usage = (body.get("stream_options") or {}).get("include_usage")
        if wants_usage and kind != "nousage":
            usage = {"prompt_tokens": 7, "completion_tokens": num_tokens, "total_tokens": 7}
            await response.write(_sse({"choices": [], "usage": usage}))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response
