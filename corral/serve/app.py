"""The FastAPI application: OpenAI endpoints, tokenizer endpoints, health, version, metrics,
LoRA adapter loading (corral.serve.lora_admin)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response

import corral
from corral.engine.async_llm import AsyncLLM
from corral.serve.cache_isolation import tenant_cache_salt
from corral.serve.chat import create_chat_completion, message_dicts, render_chat
from corral.serve.completions import create_completion
from corral.serve.dashboard.routes import install_dashboard_routes
from corral.serve.errors import APIError, install_error_handlers
from corral.serve.logprobs import TokenTexts
from corral.serve.lora_admin import install_lora_routes
from corral.serve.metrics import CONTENT_TYPE, ServerMetrics
from corral.serve.migration import install_migration_routes
from corral.serve.openapi import errors, install_openapi, post_json
from corral.serve.playground.routes import install_playground_routes
from corral.serve.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)
from corral.serve.responses import (
    ChatCompletionChunk,
    ChatCompletionResponse,
    CompletionResponse,
    DetokenizeResponse,
    KVState,
    ModelList,
    TokenizeResponse,
    VersionResponse,
)
from corral.serve.security import APIKeyMiddleware, read_json_body
from corral.serve.state import ServerConfig, ServerState
from corral.serve.streaming import json_response
from corral.serve.validation import ModelLimits, parse_body

logger = logging.getLogger(__name__)

# How long /metrics waits for the core's SLO counters before answering without them.
SLO_STATS_TIMEOUT_S = 2.0


def build_app(engine: AsyncLLM, config: ServerConfig, *, start_engine: bool = True) -> FastAPI:
    """The server around an AsyncLLM. With start_engine, the app's lifespan starts the engine
    core and shuts it down (after uvicorn has drained the requests in flight)."""
    model_name = config.served_model_name or engine.model_dir.name
    speculative, lora = engine.config.speculative, engine.config.lora
    metrics = ServerMetrics(
        model_name,
        speculative.num_speculative_tokens if speculative.is_enabled else None,
        lora.max_loras if lora.is_enabled else None,
    )
    limits = ModelLimits(
        engine.input_processor.vocab_size,
        engine.max_model_len,
        engine.input_processor.generation_defaults,
    )
    token_texts = TokenTexts(engine.tokenizer)
    state = ServerState(engine, config, model_name, limits, metrics, token_texts)
    adapters = engine.input_processor.adapters
    if adapters is not None and adapters.get(model_name) is not None:
        logger.warning(
            "LoRA adapter %r has the served model's name: it selects the base", model_name
        )
    if config.tool_call_parser is not None:
        from corral.structured.tool_parsers import TOOL_CALL_PARSERS

        state.tool_parser = TOOL_CALL_PARSERS.get(config.tool_call_parser)()
    if config.reasoning_parser is not None:
        from corral.structured.reasoning_parsers import REASONING_PARSERS

        state.reasoning_parser = REASONING_PARSERS.get(config.reasoning_parser)()
    engine.stat_loggers.append(metrics.observe)
    tracer = None
    if config.otlp_traces_endpoint is not None:
        from corral.serve.tracing import RequestTracer

        tracer = RequestTracer.to_endpoint(config.otlp_traces_endpoint)
        engine.stat_loggers.append(tracer.observe)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if start_engine:
            await engine.start()
        if engine.input_processor.kv_pool is not None:
            num_blocks, block_size = engine.input_processor.kv_pool
            metrics.set_cache_config(block_size, num_blocks)
        logger.info("serving %s (max_model_len %d)", model_name, engine.max_model_len)
        try:
            yield
        finally:
            state.draining = True
            if dashboard is not None:
                await dashboard.close()
            if start_engine:
                await engine.shutdown()
            if tracer is not None:
                tracer.shutdown()

    app = FastAPI(title="corral", version=corral.__version__, lifespan=lifespan)
    app.state.server = state
    install_error_handlers(app)
    if config.api_keys:
        app.add_middleware(APIKeyMiddleware, api_keys=config.api_keys)

    async def body(request: Request) -> object:
        if state.draining:
            raise APIError(503, "the server is shutting down", code="shutting_down")
        return await read_json_body(request, config.max_request_body_bytes)

    def apply_tenant(
        request: Request, req: CompletionRequest | ChatCompletionRequest
    ) -> str | None:
        """Salt req's cache by tenant (--cache-isolation); returns the scheduler's client id."""
        key_identity = getattr(request.state, "api_key_identity", None)
        req.cache_salt = tenant_cache_salt(
            config.cache_isolation, key_identity, req.user, req.cache_salt
        )
        return req.user or key_identity

    @app.post(
        "/v1/completions",
        **post_json(CompletionRequest, CompletionResponse, chunk_model=CompletionResponse),
    )
    async def completions(request: Request) -> Response:
        req = parse_body(CompletionRequest, await body(request))
        return await create_completion(state, req, request, apply_tenant(request, req))

    @app.post(
        "/v1/chat/completions",
        **post_json(ChatCompletionRequest, ChatCompletionResponse, chunk_model=ChatCompletionChunk),
    )
    async def chat_completions(request: Request) -> Response:
        req = parse_body(ChatCompletionRequest, await body(request))
        return await create_chat_completion(state, req, request, apply_tenant(request, req))

    @app.get("/v1/models", response_model=ModelList, responses=errors(401))
    async def models() -> Response:
        return json_response(ModelList(data=state.model_cards()))

    lora_models = install_lora_routes(app, state, body)

    @app.post("/tokenize", **post_json(TokenizeRequest, TokenizeResponse))
    async def tokenize(request: Request) -> Response:
        req = parse_body(TokenizeRequest, await body(request))
        state.select_model(req.model)
        if (req.prompt is None) == (req.messages is None):
            raise APIError(400, "send exactly one of prompt and messages", param="prompt")
        tokenizer = engine.tokenizer
        if req.messages is not None:
            token_ids = render_chat(
                tokenizer, message_dicts(req.messages), req.add_generation_prompt
            )
        else:
            token_ids = tokenizer.encode(
                req.prompt or "", add_special_tokens=req.add_special_tokens
            )
        return json_response(
            TokenizeResponse(
                tokens=token_ids, count=len(token_ids), max_model_len=engine.max_model_len
            )
        )

    @app.post("/detokenize", **post_json(DetokenizeRequest, DetokenizeResponse))
    async def detokenize(request: Request) -> Response:
        req = parse_body(DetokenizeRequest, await body(request))
        state.select_model(req.model)
        engine.input_processor.check_token_ids(req.tokens)
        return json_response(DetokenizeResponse(prompt=engine.tokenizer.decode(req.tokens)))

    @app.get(
        "/health",
        response_class=Response,
        responses={200: {"description": "alive and serving (empty body)"}, **errors(503)},
    )
    async def health() -> Response:
        if not engine.is_healthy:
            raise APIError(503, f"the engine is not running: {engine.dead_reason}", code="dead")
        if state.draining:
            raise APIError(503, "the server is shutting down", code="shutting_down")
        return Response(status_code=200)

    @app.get("/version", response_model=VersionResponse, responses=errors(401))
    async def version() -> Response:
        return json_response(VersionResponse(version=corral.__version__))

    @app.get("/metrics", response_class=PlainTextResponse, responses=errors(401))
    async def prometheus_metrics() -> Response:
        if engine.is_healthy:
            # A busy or dead core: the series keep their last values.
            with contextlib.suppress(asyncio.TimeoutError, RuntimeError):
                metrics.set_slo(await asyncio.wait_for(engine.slo_stats(), SLO_STATS_TIMEOUT_S))
        return Response(metrics.render(engine.is_healthy), media_type=CONTENT_TYPE)

    install_migration_routes(app, state)
    dashboard = install_dashboard_routes(app, state)
    install_playground_routes(app, state)

    if engine.config.debug_check_integrity:

        @app.get("/debug/kv", response_model=KVState, responses=errors(401, 503))
        async def debug_kv() -> Response:
            """The KV pool after check_integrity() (only with --debug-check-integrity); a
            failed check is a 500 naming the broken invariant."""
            try:
                state = await engine.client.call_utility("check_integrity")
            except RuntimeError as error:
                raise APIError(500, str(error), code="kv_integrity") from None
            return json_response(KVState(**state))

    install_openapi(
        app,
        [CompletionRequest, ChatCompletionRequest, TokenizeRequest, DetokenizeRequest]
        + lora_models,
        [ChatCompletionChunk],
        has_api_keys=bool(config.api_keys),
    )
    return app
