"""Speculative decoding in the simulator.

The scheduler's half (corral/core/spec_decode.py: draft tokens in the step plan, rollback after
the step, the adaptive K controller) runs unchanged. What stands in for the model:

- verification: the number of drafts accepted is drawn from a per-position acceptance model,
  acceptance[j] = P(draft j + 1 accepted | drafts 1..j accepted) (the last entry holds for every
  later position), measured from the real engine (see DEFAULT_ACCEPTANCE); the verification
  chunk (real tokens + k drafts) is priced by the target's cost model like any prefill chunk;
- the proposer: a draft model runs max(k) forward passes after the step, the first catching up
  on the tokens verified (the whole sequence for a request it has not seen), the others one
  token per request still proposing; each pass is priced by the draft's own cost model (a
  profile of the draft) or by draft_cost_ratio x the target's cost model on that pass's shape.
  With draft_loop_s (measured on the engine's one-call greedy loop, corral/model/layer_loop.py
  decode_greedy), a round costs the loop's call with one pass, each further pass, and what the
  draft's cost model adds for rows beyond one (draft_loop_pass_times_s): a profile's step holds a
  whole engine step's fixed cost, which the loop pays once a round, not once a pass (the
  simulator priced a K = 4 round at the demo pair 40% dearer than the engine ran it).
  Proposers that run on the CPU (ngram, suffix) cost propose_s_per_step + propose_s_per_token
  per proposed token. The proposal time is added to the step and reported as propose_time_s,
  as the real executor does.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from corral.config import SpeculativeConfig
from corral.core.batch_shape import MAX_DECODE_ROW_TOKENS, BatchShape
from corral.sim.cost.base import CostModel
from corral.spec.stats import SpecDecodeStats

# Conditional acceptance per draft position, measured on the real engine with the bundled pair
# (corral-demo target, corral-demo-draft), greedy, GSM8K test questions (docs/speculative-sim.md):
# draft: the draft's greedy agreement with the target, 72.4% (docs/demo-models.md; the engine at
# K = 8 measured 0.67, 0.72, 0.70, 0.73, 0.78, 0.72, 0.75, 0.83). ngram, suffix: the engine at
# K = 8 (`python -m benchmarks.spec_sim_k measure --repetition-penalty 1.0`).
DEFAULT_ACCEPTANCE: dict[str, tuple[float, ...]] = {
    "draft": (0.72,),
    "ngram": (0.64, 0.82, 0.84, 0.86, 0.89, 0.92, 0.88, 0.93),
    "suffix": (0.44, 0.60, 0.67, 0.74, 0.79, 0.89, 0.89, 0.92),
}
# corral-demo-draft decodes 2.6 to 2.7 times faster than corral-demo in corral (bf16, batch 1
# and 8; docs/demo-models.md): a draft forward pass costs about 0.38 of the target's.
DEFAULT_DRAFT_COST_RATIO = 0.38
# CPU proposers, per step that proposes and per token proposed (seconds; measured as above).
DEFAULT_PROPOSE_S_PER_STEP: dict[str, float] = {"ngram": 0.0, "suffix": 0.0}
DEFAULT_PROPOSE_S_PER_TOKEN: dict[str, float] = {"ngram": 4.6e-6, "suffix": 1.0e-5}
# The share of requests asked to propose that got a proposal (measured as above): n-gram lookup
# finds a match in 28% of the steps, the suffix trees in 81%.
DEFAULT_PROPOSAL_RATE: dict[str, float] = {"draft": 1.0, "ngram": 0.28, "suffix": 0.81}
# A name for the draft model of method "draft" when none is given (the simulator loads nothing).
SIMULATED_DRAFT_MODEL = "simulated-draft"
MAX_NUM_DRAFT_POSITIONS = 16  # SpeculativeConfig's largest K


def parse_acceptance(text: str) -> tuple[float, ...]:
    """'0.72' or '0.8,0.7,0.6' -> per-position conditional acceptance; ValueError otherwise."""
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"acceptance {text!r} is not a list of numbers like 0.8,0.7") from None
    if not values:
        raise ValueError("acceptance needs at least one probability")
    return values


@dataclass(frozen=True, slots=True)
class SpecSimConfig:
    """Speculative decoding in a simulated instance: the engine's config (the scheduler's half
    runs as is) and the models standing in for verification and the proposer."""

    config: SpeculativeConfig
    acceptance: tuple[float, ...]
    draft_cost_model: CostModel | None = None  # method draft: prices each draft pass
    draft_cost_ratio: float = 0.0  # method draft without a draft cost model: x target's cost
    # With draft_cost_model: (a loop call with its first pass, each further pass) in seconds of
    # one row, measured on the engine's greedy draft loop; None prices every pass as a step.
    draft_loop_s: tuple[float, float] | None = None
    propose_s_per_step: float = 0.0
    propose_s_per_token: float = 0.0
    # The chance that a request asked to propose gets a proposal (ngram finds no match, say).
    proposal_rate: float = 1.0
    # acceptance padded to MAX_NUM_DRAFT_POSITIONS (the last value repeated)
    acceptance_by_position: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.config.is_enabled:
            raise ValueError("SpecSimConfig needs a speculative method")
        if not self.acceptance:
            raise ValueError("acceptance needs at least one probability")
        for value in self.acceptance:
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"acceptance probabilities must be in [0, 1], got {value}")
        for name in ("draft_cost_ratio", "propose_s_per_step", "propose_s_per_token"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.draft_loop_s is not None and (
            len(self.draft_loop_s) != 2 or min(self.draft_loop_s) < 0
        ):
            raise ValueError(f"draft_loop_s must be two seconds >= 0, got {self.draft_loop_s}")
        if not 0.0 <= self.proposal_rate <= 1.0:
            raise ValueError(f"proposal_rate must be in [0, 1], got {self.proposal_rate}")
        last = self.acceptance[-1]
        padded = self.acceptance + (last,) * (MAX_NUM_DRAFT_POSITIONS - len(self.acceptance))
        object.__setattr__(self, "acceptance_by_position", padded[:MAX_NUM_DRAFT_POSITIONS])

    @property
    def is_draft_model(self) -> bool:
        return self.config.method == "draft"

    def expected_tokens_per_round(self, k: int) -> float:
        """Tokens a verification round of k drafts yields in expectation (accepted + 1)."""
        total = p = 1.0
        for alpha in self.acceptance_by_position[:k]:
            p *= alpha
            total += p
        return total

    def describe(self) -> dict:
        """A JSON-friendly summary for reports."""
        return {
            "method": self.config.method,
            "num_speculative_tokens": self.config.num_speculative_tokens,
            "num_tokens_rule": self.config.num_tokens_rule,
            "acceptance": list(self.acceptance),
            "draft_cost_model": None
            if self.draft_cost_model is None
            else self.draft_cost_model.describe(),
            "draft_cost_ratio": self.draft_cost_ratio,
            "draft_loop_s": None if self.draft_loop_s is None else list(self.draft_loop_s),
            "propose_s_per_step": self.propose_s_per_step,
            "propose_s_per_token": self.propose_s_per_token,
            "proposal_rate": self.proposal_rate,
        }


def make_spec_sim_config(
    config: SpeculativeConfig,
    acceptance: tuple[float, ...] | None = None,
    *,
    draft_cost_model: CostModel | None = None,
    draft_cost_ratio: float | None = None,
    draft_loop_s: tuple[float, float] | None = None,
    propose_s_per_step: float | None = None,
    propose_s_per_token: float | None = None,
    proposal_rate: float | None = None,
) -> SpecSimConfig | None:
    """The simulator's speculation for config (None when it is off); what is not given takes
    the method's default (DEFAULT_* above)."""
    if not config.is_enabled:
        return None
    method = config.method
    assert method is not None
    if acceptance is None:
        if method not in DEFAULT_ACCEPTANCE:
            raise ValueError(f"no default acceptance for method {method!r}; give one")
        acceptance = DEFAULT_ACCEPTANCE[method]
    is_draft = method == "draft"
    if draft_cost_ratio is None:
        has_ratio = is_draft and draft_cost_model is None
        draft_cost_ratio = DEFAULT_DRAFT_COST_RATIO if has_ratio else 0.0
    if not is_draft and (draft_cost_model is not None or draft_cost_ratio or draft_loop_s):
        raise ValueError(f"a draft cost is only used by method 'draft', not {method!r}")
    if draft_loop_s is not None and draft_cost_model is None:
        raise ValueError("the draft loop's costs price passes with a draft cost model (profile)")
    return SpecSimConfig(
        config,
        tuple(acceptance),
        draft_cost_model=draft_cost_model,
        draft_cost_ratio=draft_cost_ratio,
        draft_loop_s=None if draft_loop_s is None else tuple(draft_loop_s),
        propose_s_per_step=(
            DEFAULT_PROPOSE_S_PER_STEP.get(method, 0.0)
            if propose_s_per_step is None
            else propose_s_per_step
        ),
        propose_s_per_token=(
            DEFAULT_PROPOSE_S_PER_TOKEN.get(method, 0.0)
            if propose_s_per_token is None
            else propose_s_per_token
        ),
        proposal_rate=(
            DEFAULT_PROPOSAL_RATE.get(method, 1.0) if proposal_rate is None else proposal_rate
        ),
    )


def draft_pass_shapes(
    requests: Iterable[tuple[int, int, int]],
) -> list[BatchShape]:
    """The draft model's forward passes for one proposal round. requests: (k, catch-up tokens,
    verified tokens) per proposing request; pass 1 computes each request's catch-up tokens (its
    last catch-up tokens of the verified ones; a short catch-up runs as decode rows, as in the
    executor, and only its last row is sampled), pass j > 1 one token of every request with
    k >= j."""
    first: list[tuple[int, int, bool]] = []
    later: list[tuple[int, int]] = []  # (k, verified tokens)
    for k, num_catch_up, num_verified in requests:
        context = num_verified - num_catch_up
        if num_catch_up <= MAX_DECODE_ROW_TOKENS:
            for row in range(num_catch_up):
                first.append((1, context + row, row == num_catch_up - 1))
        else:
            first.append((num_catch_up, context, True))
        if k > 1:
            later.append((k, num_verified))
    if not first:
        return []
    shapes = [BatchShape.of_chunks(first)]
    j = 2
    while later:
        # pass j feeds draft j - 1 at position num_verified + j - 2, context num_verified + j - 2
        shapes.append(
            BatchShape.of_chunks([(1, num_verified + j - 2, True) for _, num_verified in later])
        )
        j += 1
        later = [item for item in later if item[0] >= j]
    return shapes


def draft_loop_pass_times_s(
    model: CostModel, shapes: list[BatchShape], draft_loop_s: tuple[float, float]
) -> list[float]:
    """A proposal round's passes (draft_pass_shapes) run as the engine's greedy draft loop, each
    pass's seconds: the call with its first pass, then each further pass, as measured at one row
    (draft_loop_s), plus what the draft's cost model adds to each pass for its rows beyond one
    (and the first pass's catch-up beyond one row). The loop samples in C++ (an argmax over
    logits its pass already computed), so the model's per-sampled-request cost, an engine step's
    sampling and output handling in Python, is not added for the extra rows."""
    call_s, pass_s = draft_loop_s
    times_s = []
    for index, shape in enumerate(shapes):
        rows = shape._replace(num_sampled=1)
        extra_s = max(model.step_time_s(rows) - model.step_time_s(_one_row(shape)), 0.0)
        times_s.append((call_s if index == 0 else pass_s) + extra_s)
    return times_s


def _one_row(shape: BatchShape) -> BatchShape:
    """A pass of one decode row at the mean context of shape's rows (its first chunk's context
    for a catch-up prefill)."""
    if shape.num_decode_requests:
        context = shape.decode_context_tokens // shape.num_decode_requests
    else:
        context = shape.prefill_context_tokens // max(shape.num_prefill_requests, 1) + 1
    return BatchShape(
        num_decode_requests=1,
        decode_context_tokens=context,
        max_decode_context=context,
        num_sampled=1,
    )


def merge_spec_stats(stats: Iterable[SpecDecodeStats | None]) -> SpecDecodeStats | None:
    """The sum of several instances' counters (None when none speculated)."""
    total: SpecDecodeStats | None = None
    for one in stats:
        if one is None:
            continue
        if total is None:
            total = SpecDecodeStats()
        total.num_drafts += one.num_drafts
        total.num_draft_tokens += one.num_draft_tokens
        total.num_accepted_tokens += one.num_accepted_tokens
        total.num_planned_requests += one.num_planned_requests
        total.num_planned_tokens += one.num_planned_tokens
        per_pos = total.num_accepted_tokens_per_pos
        if len(per_pos) < len(one.num_accepted_tokens_per_pos):
            per_pos.extend([0] * (len(one.num_accepted_tokens_per_pos) - len(per_pos)))
        for position, count in enumerate(one.num_accepted_tokens_per_pos):
            per_pos[position] += count
    return total


def spec_stats_dict(stats: SpecDecodeStats) -> dict:
    """The counters and the derived rates, JSON-friendly."""
    return {
        "num_drafts": stats.num_drafts,
        "num_draft_tokens": stats.num_draft_tokens,
        "num_accepted_tokens": stats.num_accepted_tokens,
        "num_accepted_tokens_per_pos": list(stats.num_accepted_tokens_per_pos),
        "num_planned_requests": stats.num_planned_requests,
        "num_planned_tokens": stats.num_planned_tokens,
        "acceptance_rate": stats.acceptance_rate,
        "mean_accepted_length": stats.mean_accepted_length,
    }
