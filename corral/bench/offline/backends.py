"""Offline backends: generate exactly the asked number of tokens for token-id prompts, greedily,
EOS ignored, no detokenization. Registered by name in OFFLINE_BACKENDS."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from corral.bench.spec_decode import SpecDecodeCounts
from corral.config import EngineConfig
from corral.registry import Registry

WARMUP_PROMPT_IDS = list(range(100, 116))


@dataclass(frozen=True, slots=True)
class BackendOptions:
    """engine: the corral engine's config (its model, dtype and device serve every backend);
    batch_size: static batch size of the transformers backend."""

    engine: EngineConfig
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"--hf-batch-size must be >= 1, got {self.batch_size}")


class OfflineBackend(ABC):
    """Loads the model once; generate() may be called many times."""

    def __init__(self, options: BackendOptions) -> None:
        self.options = options

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Token ids must lie in [0, vocab_size)."""

    @property
    @abstractmethod
    def dtype_name(self) -> str:
        """The dtype the model runs in, e.g. 'bfloat16'."""

    @abstractmethod
    def generate(self, prompts: Sequence[list[int]], output_lens: Sequence[int]) -> int:
        """Generate output_lens[i] tokens after prompts[i]; returns the output tokens that count
        (the ones asked for; padding rows of a static batch do not count)."""

    def spec_decode_counts(self) -> SpecDecodeCounts | None:
        """Cumulative speculative decoding counters so far; None when the backend does not
        speculate."""
        return None

    def warmup(self) -> None:
        """One small generation, so one-time costs stay out of the timings."""
        self.generate([WARMUP_PROMPT_IDS], [4])


OFFLINE_BACKENDS: Registry[OfflineBackend] = Registry("offline backend")


def make_backend(name: str, options: BackendOptions) -> OfflineBackend:
    """Build (and load) the backend called name."""
    from corral.bench.offline import corral_backend, hf_backend  # noqa: F401 - registration

    return OFFLINE_BACKENDS.get(name)(options)
