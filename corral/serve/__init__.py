"""The OpenAI-compatible HTTP server (`corral serve`)."""
