"""WorkloadOptions: every knob of a workload, for build_workload (and the CLI flags)."""

from __future__ import annotations

import functools
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

from corral.workloads.arrivals import ArrivalOptions

# The most samples one request may ask for (the server's limit on n).
MAX_SAMPLES_PER_REQUEST = 128


@dataclass(frozen=True, slots=True)
class WorkloadOptions:
    """Which dataset, how many requests, when they arrive, and how their lengths are scaled.

    Dataset-specific fields are ignored by the datasets that do not use them.
    """

    dataset: str = "random"
    # None: the whole dataset (a trace, gsm8k, a JSONL file) or 1000 (generated datasets).
    num_requests: int | None = None
    seed: int = 0
    # None: the dataset's own timestamps for traces, else all at once.
    arrival: ArrivalOptions | None = None
    data_dir: str | None = None  # default: CORRAL_DATA_DIR or <repo>/../shared/data
    dataset_path: str | None = None  # a JSONL file, or another CSV/JSONL for a named dataset
    tokenizer: str | None = None  # a tokenizer directory for text datasets; None: word hashes
    vocab_size: int = 32000
    # Length scaling (for small machines): multiply trace/random lengths, then cap them.
    length_scale: float = 1.0
    max_prompt_len: int | None = None
    max_output_len: int | None = None
    max_model_len: int | None = None  # prompt + output must fit; prompts are cut to fit
    # random and shared-prefix: mean prompt (suffix) and output lengths in tokens.
    input_len: int = 512
    output_len: int = 128
    range_ratio: float = 0.0  # uniform lengths in [mean * (1 - r), mean * (1 + r)]
    length_distribution: str = "uniform"  # uniform | lognormal (sigma = range_ratio)
    prefix_len: int = 0  # random: a prefix shared by all; shared-prefix: the system prompt
    num_groups: int = 8  # shared-prefix: distinct system prompts; rag: documents in the pool
    num_rag_chunks: int = 4  # rag: documents retrieved per request
    # Traces: skip the first trace_offset requests, keep each with probability sample_fraction.
    trace_offset: int = 0
    sample_fraction: float = 1.0
    # gsm8k: split and number of worked examples before each question (a shared prefix).
    split: str = "test"
    num_shots: int = 0
    # multi-turn: turns per conversation and the pause before each follow-up.
    num_turns: int = 4
    think_time_s: float = 0.0
    # How each pause varies around think_time_s (its mean): fixed, exponential, or
    # lognormal:SIGMA (tool latencies: most calls quick, a long tail).
    think_time_dist: str = "fixed"
    # gsm8k and jsonl: force every output length to this many tokens.
    fixed_output_len: int | None = None
    # Tag requests with client ids client-0..client-(n-1) and priorities 0..n-1, drawn at
    # random (seeded) per request, or per conversation for multi-turn; 0 leaves them unset.
    num_clients: int = 0
    num_priorities: int = 0
    # Samples per request (the request's n: they share its prompt's KV blocks); None: the
    # dataset's default (reasoning: 8, the others: 1).
    samples_per_request: int | None = None
    # reasoning: each output length is lognormal with this mean (tokens) and sigma, capped so
    # prompt + output fits max_model_len (and by max_output_len).
    reasoning_output_len: int = 1536
    reasoning_output_sigma: float = 0.5

    def __post_init__(self) -> None:
        checks = {
            "num_requests": (self.num_requests is None or self.num_requests >= 1, ">= 1"),
            "vocab_size": (self.vocab_size >= 2, ">= 2"),
            "length_scale": (self.length_scale > 0, "> 0"),
            "input_len": (self.input_len >= 1, ">= 1"),
            "output_len": (self.output_len >= 1, ">= 1"),
            "range_ratio": (self.range_ratio >= 0, ">= 0"),
            "prefix_len": (self.prefix_len >= 0, ">= 0"),
            "num_groups": (self.num_groups >= 1, ">= 1"),
            "num_rag_chunks": (self.num_rag_chunks >= 1, ">= 1"),
            "trace_offset": (self.trace_offset >= 0, ">= 0"),
            "sample_fraction": (0 < self.sample_fraction <= 1, "in (0, 1]"),
            "num_shots": (self.num_shots >= 0, ">= 0"),
            "num_turns": (self.num_turns >= 1, ">= 1"),
            "think_time_s": (self.think_time_s >= 0, ">= 0"),
            "num_clients": (self.num_clients >= 0, ">= 0"),
            "num_priorities": (self.num_priorities >= 0, ">= 0"),
            "reasoning_output_len": (self.reasoning_output_len >= 1, ">= 1"),
            "reasoning_output_sigma": (0 <= self.reasoning_output_sigma < 10, "in [0, 10)"),
        }
        for name, (ok, rule) in checks.items():
            if not ok:
                raise ValueError(f"{name} must be {rule}, got {getattr(self, name)}")
        for name in ("max_prompt_len", "max_output_len", "max_model_len", "fixed_output_len"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        parse_think_time_dist(self.think_time_dist)
        n = self.samples_per_request
        if n is not None and not 1 <= n <= MAX_SAMPLES_PER_REQUEST:
            raise ValueError(
                f"samples_per_request must be in [1, {MAX_SAMPLES_PER_REQUEST}], got {n}"
            )
        if self.length_distribution not in ("uniform", "lognormal"):
            raise ValueError(
                "length_distribution must be uniform or lognormal, got "
                f"{self.length_distribution!r}"
            )


THINK_TIME_DISTS = ("fixed", "exponential", "lognormal:SIGMA", "measured:PATH")


def parse_think_time_dist(text: str) -> tuple[str, float]:
    """(kind, sigma) of a think_time_dist; ValueError naming think_time_dist otherwise.
    measured:PATH replays tool latencies measured elsewhere (measured_latencies)."""
    kind, _, sigma_text = text.partition(":")
    if kind in ("fixed", "exponential") and not sigma_text:
        return kind, 0.0
    if kind == "measured":
        measured_latencies(sigma_text)  # refused here if unreadable
        return kind, 0.0
    if kind == "lognormal":
        try:
            sigma = float(sigma_text or "1")
        except ValueError:
            sigma = -1.0
        if sigma > 0 and sigma < 10:
            return kind, sigma
    raise ValueError(
        f"think_time_dist must be one of {', '.join(THINK_TIME_DISTS)} (0 < SIGMA < 10), "
        f"got {text!r}"
    )


@functools.lru_cache(maxsize=8)
def measured_latencies(path: str) -> tuple[float, ...]:
    """Tool latencies in seconds from a file: one number per line (a '#' starts a comment),
    or a JSON list (benchmarks/tool_latencies.py writes both). ValueError naming the file
    unless it holds at least one, all finite and >= 0."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ValueError(f"think_time_dist measured:{path}: cannot read it ({error})") from None
    try:
        if text.lstrip().startswith("["):
            values = [float(value) for value in json.loads(text)]
        else:
            lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
            values = [float(line) for line in lines if line]
    except (ValueError, TypeError) as error:
        raise ValueError(f"think_time_dist measured:{path}: not numbers ({error})") from None
    if not values or not all(0 <= value < math.inf for value in values):
        raise ValueError(
            f"think_time_dist measured:{path}: needs at least one latency, each finite and >= 0"
        )
    return tuple(values)


def draw_think_time(rng: random.Random, mean_s: float, dist: str) -> float:
    """One pause of mean mean_s from the distribution dist (parse_think_time_dist). measured:
    one of the file's latencies, drawn with replacement; a mean_s > 0 rescales them to it."""
    kind, sigma = parse_think_time_dist(dist)
    if kind == "measured":
        latencies = measured_latencies(dist.partition(":")[2])
        drawn = rng.choice(latencies)
        average = sum(latencies) / len(latencies)
        return drawn * mean_s / average if mean_s > 0 and average > 0 else drawn
    if mean_s == 0 or kind == "fixed":
        return mean_s
    if kind == "exponential":
        return rng.expovariate(1 / mean_s)
    return rng.lognormvariate(math.log(mean_s) - sigma * sigma / 2, sigma)
