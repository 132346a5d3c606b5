"""Sampler: logits processing (bias, min_tokens, penalties), greedy and random sampling, logprobs.

Seeded requests draw from a generator seeded by (seed, output position), so a sample depends on
nothing but the request's own logits, seed and position: not on its batch mates, not on
preemption. Logprobs are those of the model's raw distribution, before any processing.

A temperature below GREEDY_BELOW_TEMPERATURE samples greedily, as temperature 0 does: the limit of
sampling as the temperature goes to 0, and dividing logits by a tinier one overflows to inf (NaN
probabilities).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from corral.core.messages import TokenLogprobs
from corral.model.kernels import cpu_kernels
from corral.sampling_params import SamplingParams

if TYPE_CHECKING:
    from corral.structured.masking import TokenMask

# Candidates examined before falling back to a full sort for top-p (exact either way).
_TOP_P_CANDIDATES = 1024
_MASK64 = (1 << 64) - 1
GREEDY_BELOW_TEMPERATURE = 1e-5


def position_seed(seed: int, position: int) -> int:
    """Mix (seed, position) into a 63-bit generator seed (splitmix64 finalizer)."""
    z = (seed * 0x9E3779B97F4A7C15 + position + 1) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & ((1 << 63) - 1)


@dataclass(slots=True)
class SamplingRow:
    """What the sampler needs to know about one request at one step."""

    params: SamplingParams
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    stop_token_ids: frozenset[
        int
    ]  # EOS (unless ignored) and stop_token_ids, masked under min_tokens


@dataclass(slots=True)
class SamplerOutput:
    token_ids: list[int]
    logprobs: list[TokenLogprobs | None]


def argmax_rows(logits: torch.Tensor) -> list[int]:
    """Each row's argmax, as torch's argmax chooses (first largest, or first NaN); on CPU float32
    through corral's kernel (cpu_argmax.cpp: 117 us against torch's 1,015 at [32, 49152] on 2
    threads of an AMX Xeon; 5 against 64 at one row)."""
    kernels = cpu_kernels() if logits.device.type == "cpu" else None
    if kernels is not None and logits.dtype == torch.float32 and logits.dim() == 2:
        return kernels.argmax_rows(logits).tolist()
    return logits.argmax(dim=-1).tolist()


class Sampler:
    def __init__(self, seed: int, device: torch.device) -> None:
        self.device = device
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    def __call__(
        self, logits: torch.Tensor, rows: list[SamplingRow], mask: TokenMask | None = None
    ) -> SamplerOutput:
        """Sample one token per row of logits [num_rows, vocab] (float32, modified in place);
        mask: the grammar's allowed tokens per row, if any."""
        if mask is None and all(plain_greedy(row) for row in rows):
            return SamplerOutput(argmax_rows(logits), [None] * len(rows))
        want_logprobs = [row.params.logprobs is not None for row in rows]
        raw_logprobs = torch.log_softmax(logits, dim=-1) if any(want_logprobs) else None
        self.process(logits, rows, mask)
        token_ids = self._sample(logits, rows)
        logprobs: list[TokenLogprobs | None] = [None] * len(rows)
        if raw_logprobs is not None:
            for index, row in enumerate(rows):
                if want_logprobs[index]:
                    logprobs[index] = gather_logprobs(
                        raw_logprobs[index], token_ids[index], row.params.logprobs or 0
                    )
        return SamplerOutput(token_ids, logprobs)

    def process(
        self, logits: torch.Tensor, rows: list[SamplingRow], mask: TokenMask | None = None
    ) -> None:
        """Grammar mask, logit bias, min_tokens, repetition/frequency/presence penalties, per
        row, in place."""
        if mask is not None:
            mask.apply(logits)
        vocab_size = logits.shape[-1]
        for index, row in enumerate(rows):
            params = row.params
            values = logits[index]
            if params.logit_bias:
                ids = [t for t in params.logit_bias if 0 <= t < vocab_size]
                bias = torch.tensor([params.logit_bias[t] for t in ids], device=logits.device)
                values[ids] += bias
            if len(row.output_token_ids) < params.min_tokens and row.stop_token_ids:
                values[[t for t in row.stop_token_ids if t < vocab_size]] = float("-inf")
            if params.repetition_penalty != 1.0:
                seen = torch.tensor(
                    sorted(set(row.prompt_token_ids) | set(row.output_token_ids)),
                    device=logits.device,
                )
                picked = values[seen]
                penalty = params.repetition_penalty
                values[seen] = torch.where(picked > 0, picked / penalty, picked * penalty)
            if (params.frequency_penalty or params.presence_penalty) and row.output_token_ids:
                counts = torch.bincount(
                    torch.tensor(row.output_token_ids, device=logits.device),
                    minlength=vocab_size,
                )[:vocab_size].to(logits.dtype)
                values -= params.frequency_penalty * counts
                values -= params.presence_penalty * (counts > 0).to(logits.dtype)

    def _sample(self, logits: torch.Tensor, rows: list[SamplingRow]) -> list[int]:
        greedy = [i for i, row in enumerate(rows) if samples_greedily(row.params)]
        random = [i for i, row in enumerate(rows) if not samples_greedily(row.params)]
        token_ids = [0] * len(rows)
        if greedy:
            picked = argmax_rows(logits[greedy] if len(greedy) < len(rows) else logits)
            for i, token_id in zip(greedy, picked, strict=True):
                token_ids[i] = token_id
        if random:
            subset = logits[random] if len(random) < len(rows) else logits
            probs = sampling_probs(subset, [rows[i].params for i in random])
            noise = self._exponential_noise(probs, [rows[i] for i in random])
            picked = (probs / noise).argmax(dim=-1).tolist()
            for i, token_id in zip(random, picked, strict=True):
                token_ids[i] = token_id
        return token_ids

    def _exponential_noise(self, probs: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
        """Exp(1) noise per element; argmax(p / noise) is a sample from p (the exponential race)."""
        noise = torch.empty_like(probs)
        unseeded = [i for i, row in enumerate(rows) if row.params.seed is None]
        if unseeded:
            draws = torch.empty(
                (len(unseeded), probs.shape[1]), dtype=probs.dtype, device=probs.device
            ).exponential_(generator=self.generator)
            noise[unseeded] = draws
        for i, row in enumerate(rows):
            if row.params.seed is not None:
                generator = self.position_generator(row.params.seed, len(row.output_token_ids))
                noise[i].exponential_(generator=generator)
        return noise

    def position_generator(self, seed: int, position: int) -> torch.Generator:
        """The generator of a seeded request's draw at output position `position`."""
        generator = torch.Generator(device=self.device)
        generator.manual_seed(position_seed(seed, position))
        return generator

    def race_sample(self, weights: torch.Tensor, seed: int | None, position: int) -> int:
        """One sample from weights [vocab] (unnormalised) by the exponential race, with the noise
        this sampler draws at that output position: the seeded request's own, or the shared
        generator's. Speculative verification and draft models draw with it."""
        noise = torch.empty_like(weights)
        generator = self.generator if seed is None else self.position_generator(seed, position)
        noise.exponential_(generator=generator)
        return int((weights / noise).argmax().item())


def samples_greedily(params: SamplingParams) -> bool:
    return params.temperature < GREEDY_BELOW_TEMPERATURE


def processes_logits(params: SamplingParams) -> bool:
    """Whether process() changes a row's logits through its parameters alone (logit bias or a
    penalty; min_tokens depends on the row, see plain_greedy)."""
    return bool(
        params.logit_bias
        or params.repetition_penalty != 1.0
        or params.frequency_penalty
        or params.presence_penalty
    )


def plain_greedy(row: SamplingRow) -> bool:
    """Greedy, without logprobs, and nothing process() would change in its logits (min_tokens
    reached or no stop tokens to hold back)."""
    params = row.params
    return (
        samples_greedily(params)
        and params.logprobs is None
        and not processes_logits(params)
        and (len(row.output_token_ids) >= params.min_tokens or not row.stop_token_ids)
    )


def sampling_probs(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """The distribution each row is sampled from: processed logits [rows, vocab] divided by the
    temperature, cut to top_k / top_p / min_p, softmaxed (logits are not modified)."""
    temperatures = torch.tensor([p.temperature for p in params], device=logits.device)
    scaled = logits / temperatures.unsqueeze(1)
    _apply_top_k_top_p(scaled, params)
    _apply_min_p(scaled, params)
    return torch.softmax(scaled, dim=-1)


def _apply_top_k_top_p(logits: torch.Tensor, params: list[SamplingParams]) -> None:
    """Mask, per row, everything outside the top_k and outside the top_p nucleus (in place)."""
    vocab_size = logits.shape[-1]
    for index, param in enumerate(params):
        top_k = min(param.top_k, vocab_size) if param.top_k else 0
        if not top_k and param.top_p >= 1.0:
            continue
        values = logits[index]
        num_candidates = top_k or min(_TOP_P_CANDIDATES, vocab_size)
        top_values, top_ids = values.topk(num_candidates)
        keep = torch.ones(num_candidates, dtype=torch.bool, device=logits.device)
        if param.top_p < 1.0:
            probs = torch.exp(top_values - torch.logsumexp(values, dim=-1))
            cumulative = probs.cumsum(dim=-1)
            if not top_k and num_candidates < vocab_size and cumulative[-1] < param.top_p:
                top_values, top_ids = values.sort(descending=True)  # nucleus is wider: full sort
                probs = torch.exp(top_values - torch.logsumexp(values, dim=-1))
                cumulative = probs.cumsum(dim=-1)
                keep = torch.ones(vocab_size, dtype=torch.bool, device=logits.device)
            keep &= (cumulative - probs) < param.top_p
            keep[0] = True
        kept_values = torch.where(keep, top_values, float("-inf"))
        values.fill_(float("-inf"))
        values.scatter_(0, top_ids, kept_values)


def _apply_min_p(logits: torch.Tensor, params: list[SamplingParams]) -> None:
    rows = [i for i, p in enumerate(params) if p.min_p > 0]
    if not rows:
        return
    min_p = torch.tensor([params[i].min_p for i in rows], device=logits.device).unsqueeze(1)
    subset = logits[rows]
    probs = torch.softmax(subset, dim=-1)
    threshold = probs.max(dim=-1, keepdim=True).values * min_p
    logits[rows] = subset.masked_fill(probs < threshold, float("-inf"))


def gather_logprobs(logprobs: torch.Tensor, token_id: int, num_top: int) -> TokenLogprobs:
    """The token's logprob and rank in one row of log-probabilities, then the top num_top."""
    chosen = logprobs[token_id]
    rank = int((logprobs > chosen).sum().item()) + 1
    ids = [token_id]
    values = [float(chosen.item())]
    ranks = [rank]
    if num_top:
        top_values, top_ids = logprobs.topk(num_top)
        ids += top_ids.tolist()
        values += top_values.tolist()
        ranks += list(range(1, num_top + 1))
    return TokenLogprobs(ids, values, ranks)
