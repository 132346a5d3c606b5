"""Build the configured proposer for an executor (the draft model needs torch and the target's
device; the others are plain Python)."""

from __future__ import annotations

from typing import Any

from corral.config import SpeculativeConfig
from corral.spec.proposer import PROPOSERS, Proposer


def make_proposer(config: SpeculativeConfig, **target: Any) -> Proposer | None:
    """The proposer of config.method (None when speculation is off). target: for "draft", the
    target's vocab_size, dtype, device, num_blocks, block_size and max_model_len."""
    if not config.is_enabled:
        return None
    if config.method == "draft":
        from corral.spec.proposers.draft import DraftProposer

        assert config.model is not None
        return DraftProposer.create(
            config.model,
            target["vocab_size"],
            target["dtype"],
            target["device"],
            target["num_blocks"],
            target["block_size"],
            target["max_model_len"],
        )
    import corral.spec.proposers  # noqa: F401  (registers ngram, suffix)

    if config.method == "ngram":
        return PROPOSERS.get("ngram")(min_n=config.ngram_min, max_n=config.ngram_max)  # type: ignore[call-arg]
    return PROPOSERS.get(config.method)()  # type: ignore[arg-type]
