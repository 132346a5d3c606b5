"""Structured output: constrained decoding, tool-call parsing and reasoning parsing."""
