"""Speculative decoding's configuration (corral/spec): who proposes, how many tokens at most, and
whether the number adapts (corral/spec/controller.py). Re-exported by corral.config."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SpeculativeConfig:
    """Speculative decoding (corral/spec): who proposes, how many tokens at most, and whether the
    number adapts to the batch (the default) or stays fixed."""

    method: str | None = None  # None: off; "ngram", "suffix", "draft"
    num_speculative_tokens: int = 4  # the most tokens proposed per request and step (K)
    # The draft model of method "draft": a directory or a bundled model's name.
    model: str | None = None
    # "adaptive": K per request and step from measured acceptance and step costs, down to 0;
    # "fixed": always K (where the proposer has that many).
    num_tokens_rule: str = "adaptive"
    # n-gram sizes of method "ngram" (longest first).
    ngram_min: int = 2
    ngram_max: int = 4

    @property
    def runs_in_passes(self) -> bool:
        """Whether the proposer runs a model, one forward pass per draft position over the
        requests still proposing (method "draft"), rather than a lookup."""
        return self.method == "draft"

    def __post_init__(self) -> None:
        if self.method is None:
            return
        from corral.spec.proposer import PROPOSERS

        if self.method != "draft":
            import corral.spec.proposers  # noqa: F401  (registers ngram, suffix)

            PROPOSERS.get(self.method)  # ValueError lists the known ones
        if not 1 <= self.num_speculative_tokens <= 15:
            # 15 drafts and the real token: the longest chunk that runs as decode rows.
            raise ValueError(
                f"num_speculative_tokens must be in [1, 15], got {self.num_speculative_tokens}"
            )
        if self.method == "draft" and not self.model:
            raise ValueError(
                "speculative method 'draft' needs a draft model (speculative_model, "
                "--speculative-model), e.g. corral-demo-draft"
            )
        if self.method != "draft" and self.model:
            raise ValueError(
                f"a speculative model ({self.model!r}) is only used by method 'draft', "
                f"not {self.method!r}"
            )
        if self.num_tokens_rule not in ("adaptive", "fixed"):
            raise ValueError(
                f"num_tokens_rule must be 'adaptive' or 'fixed', got {self.num_tokens_rule!r}"
            )
        if not 1 <= self.ngram_min <= self.ngram_max:
            raise ValueError(
                f"ngram sizes need 1 <= min <= max, got {self.ngram_min} and {self.ngram_max}"
            )

    @property
    def is_enabled(self) -> bool:
        return self.method is not None
