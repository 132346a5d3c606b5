"""The dataset plug-in interface: a dataset turns options into drafts (lengths, text, ids)."""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass

from corral.registry import Registry
from corral.workloads.options import WorkloadOptions
from corral.workloads.tokens import TextEncoder


@dataclass(slots=True)
class Draft:
    """A request before arrival times and ids are assigned.

    Either prompt_token_ids is given, or the prompt is synthetic (length only). trace_time_s is
    the dataset's own timestamp (traces, timed JSONL); conversation_index/turn_index link the
    turns of a multi-turn conversation (turn k > 0 follows turn k - 1 of the same conversation).
    """

    num_prompt_tokens: int
    num_output_tokens: int
    prompt: str | None = None
    prompt_token_ids: tuple[int, ...] | None = None
    trace_time_s: float | None = None
    conversation_index: int | None = None
    turn_index: int = 0
    new_prompt: str | None = None
    # Text datasets keep their prompt length; only synthetic lengths are scaled.
    is_scalable: bool = False
    # The output may take all the context the prompt leaves (reasoning); otherwise
    # max_model_len caps it at half the context.
    may_fill_context: bool = False
    # Retrieved chunks, (first position, num_tokens) in prompt_token_ids (the rag dataset).
    rag_chunk_spans: tuple[tuple[int, int], ...] | None = None


class Dataset(ABC):
    """Produces the drafts of a workload. `default_num_requests` applies when none is asked."""

    default_num_requests: int | None = 1000
    # Samples per request when the options do not say (the request's n).
    default_samples_per_request: int = 1

    @abstractmethod
    def drafts(
        self, options: WorkloadOptions, encoder: TextEncoder, rng: random.Random
    ) -> list[Draft]:
        """At most options.num_requests drafts (all of the dataset when None and no default)."""


DATASETS: Registry[Dataset] = Registry("dataset")


def num_wanted(dataset: Dataset, options: WorkloadOptions) -> int | None:
    return (
        options.num_requests if options.num_requests is not None else (dataset.default_num_requests)
    )
