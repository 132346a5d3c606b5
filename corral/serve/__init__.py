"""The OpenAI-compatible HTTP server (`corral serve`): routes, request validation and OpenAPI
schemas, streaming, errors, metrics, API keys and cache isolation, over an AsyncLLM."""
