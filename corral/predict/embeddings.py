"""Optional prompt embeddings from the served model's own hidden states.

An EmbeddingSource turns texts into fixed-size vectors that featurize() appends to the dense
statistics. HiddenStateEmbedder mean-pools the last hidden layer of a Hugging Face model
directory (the model being served) with transformers on the CPU; it imports torch only when
used, so the rest of the package stays torch-free. Embeddings cost a forward pass per prompt:
use them where that is cheap next to the generation they schedule.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np


class EmbeddingSource(ABC):
    name: str

    @abstractmethod
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float64 embeddings."""


class HiddenStateEmbedder(EmbeddingSource):
    """Mean of the final hidden states over the prompt's tokens (at most max_tokens of them)."""

    def __init__(self, model_dir: str, max_tokens: int = 256) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.name = model_dir
        self.max_tokens = max_tokens
        self._tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self._model = AutoModel.from_pretrained(model_dir, torch_dtype="float32").eval()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        vectors = []
        with torch.inference_mode():
            for text in texts:
                ids = self._tokenizer(
                    text, return_tensors="pt", truncation=True, max_length=self.max_tokens
                )
                hidden = self._model(**ids).last_hidden_state[0]
                vectors.append(hidden.mean(dim=0).double().numpy())
        return np.stack(vectors) if vectors else np.zeros((0, 0))
