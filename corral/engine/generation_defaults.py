"""Sampling defaults from a model directory's generation_config.json (as transformers and vLLM
use them): a request that leaves a field unset gets the model author's recommended value."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# generation_config.json key -> SamplingParams field
_FIELDS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "max_new_tokens": "max_tokens",
}


def load_generation_defaults(model_dir: str | Path) -> dict[str, Any]:
    """The SamplingParams fields the model's generation_config.json sets (empty without one)."""
    path = Path(model_dir) / "generation_config.json"
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        logger.warning("ignoring unreadable %s: %s", path, error)
        return {}
    defaults = {field: config[key] for key, field in _FIELDS.items() if config.get(key) is not None}
    if defaults:
        logger.info("sampling defaults from %s: %s", path.name, defaults)
    return defaults
