"""An untied checkpoint (tie_word_embeddings false) without lm_head.weight is refused, naming
the tensor, instead of loading with the embeddings as the output head (issue 13, defect 10c)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from corral import LLM


def _copy_without_lm_head(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    (weights_file,) = target.glob("*.safetensors")
    tensors = load_file(weights_file)
    assert "lm_head.weight" in tensors
    del tensors["lm_head.weight"]
    save_file(tensors, weights_file, metadata={"format": "pt"})
    return target


def test_untied_checkpoint_without_lm_head_is_refused(tiny_model, tmp_path):
    assert json.loads((tiny_model / "config.json").read_text())["tie_word_embeddings"] is False
    headless = _copy_without_lm_head(tiny_model, tmp_path / "headless")
    with pytest.raises(ValueError, match=r"missing weights: lm_head\.weight") as error:
        LLM(model=str(headless), dtype="float32", num_blocks=8)
    assert str(headless) in str(error.value)


def test_tied_checkpoint_without_lm_head_loads(tiny_model_factory):
    path = tiny_model_factory("qwen2")
    assert json.loads((path / "config.json").read_text())["tie_word_embeddings"] is True
    (weights_file,) = path.glob("*.safetensors")
    assert "lm_head.weight" not in load_file(weights_file)
    llm = LLM(model=str(path), dtype="float32", num_blocks=8)
    assert llm.engine.core.executor.model.lm_head is llm.engine.core.executor.model.embed_tokens
