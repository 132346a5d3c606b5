"""Datasets, registered by name. Importing this package registers the built-in ones."""

from corral.workloads.datasets import (  # noqa: F401
    azure,
    gsm8k,
    jsonl,
    multi_turn,
    rag,
    random_lengths,
    reasoning,
    shared_prefix,
)
from corral.workloads.datasets.base import DATASETS, Dataset, Draft

__all__ = ["DATASETS", "Dataset", "Draft"]
