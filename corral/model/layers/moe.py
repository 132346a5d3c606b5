"""A sparse mixture-of-experts MLP block (Mixtral, Qwen2-MoE, Qwen3-MoE).

Routing: router logits -> softmax over all experts in float32 -> the top num_experts_per_tok
experts per token, their probabilities as weights, renormalised to sum to 1 when the architecture
says so (Mixtral always; Qwen models when norm_topk_prob). Qwen2-MoE adds a shared SwiGLU expert
that every token runs, scaled by sigmoid(shared_expert_gate . x).

Compute: the (token, expert) assignments are sorted by expert, so each selected expert runs one
gate|up matmul and one down matmul over all of its rows of the step; one index_copy puts the rows
back in (token, k) order and each token sums its top_k rows weighted by their routing weights
(an index_add of the sorted rows into zeros was up to 15x slower on CPU: benchmarks/moe.py). The
Python loop is over experts that received tokens.

Weights are stacked at load time: gate|up as [num_experts, 2 * moe_intermediate, hidden] and down
as [num_experts, hidden, moe_intermediate], from either per-expert checkpoint tensors
(experts.{e}.gate_proj/up_proj/down_proj, Mixtral's experts.{e}.w1/w3/w2) or already-stacked
ones (experts.gate_up_proj, experts.down_proj).

Over tensor-parallel ranks (corral/model/expert_parallel.py) a block may hold only a contiguous
range of the experts (set_local_experts: expert parallelism; it then runs only the expert-sorted
rows routed to them, which are one contiguous run) and gets all_reduce, which sums the ranks'
partial outputs once per call. Routing always covers every expert, identically on every rank,
so expert_counts are the totals on each rank.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from corral.model.layers.linear import linear

# Per-expert checkpoint names -> (stack, slot): slot 0/1 are gate/up of the fused gate|up.
_EXPERT_PARTS = {
    "gate_proj": ("gate_up", 0),
    "w1": ("gate_up", 0),
    "up_proj": ("gate_up", 1),
    "w3": ("gate_up", 1),
    "down_proj": ("down", None),
    "w2": ("down", None),
}


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


class SparseMoE:
    """One layer's experts, router and optional shared expert, with per-expert token counts."""

    def __init__(
        self, num_experts: int, top_k: int, renormalize: bool, has_shared_expert: bool
    ) -> None:
        self.num_experts = num_experts
        self.top_k = top_k
        self.renormalize = renormalize
        self.has_shared_expert = has_shared_expert
        # The experts this block holds: [first_expert, first_expert + num_local_experts).
        self.first_expert = 0
        self.num_local_experts = num_experts
        # Tensor parallelism: the in-place sum over ranks of each call's output.
        self.all_reduce: Callable[[torch.Tensor], None] | None = None
        self.router: torch.Tensor | None = None  # [num_experts, hidden]
        self.gate_up: torch.Tensor | None = None  # [num_local_experts, 2 * intermediate, hidden]
        self.down: torch.Tensor | None = None  # [num_local_experts, hidden, intermediate]
        self.shared_gate_up: torch.Tensor | None = None  # [2 * shared_intermediate, hidden]
        self.shared_down: torch.Tensor | None = None  # [hidden, shared_intermediate]
        self.shared_gate: torch.Tensor | None = None  # [1, hidden]
        # Tokens routed to each expert since the last reset (recomputed tokens count again).
        self.expert_counts: torch.Tensor | None = None
        self._pending: dict[tuple[str, int], list[torch.Tensor | None]] = {}
        self._pending_shared: list[torch.Tensor | None] = [None, None]

    # ----- loading -------------------------------------------------------------------------

    def set_local_experts(self, first: int, count: int) -> None:
        """Hold (load and run) only experts first .. first + count - 1 (before loading)."""
        if first < 0 or count < 1 or first + count > self.num_experts:
            raise ValueError(f"experts {first}..{first + count - 1} of {self.num_experts}")
        self.first_expert, self.num_local_experts = first, count

    @property
    def is_expert_subset(self) -> bool:
        return self.num_local_experts < self.num_experts

    def load(self, name: str, tensor: torch.Tensor) -> bool:
        """Take one tensor named relative to the block (e.g. "experts.3.w1.weight",
        "gate.weight", "shared_expert.up_proj.weight"); False when the name is not ours."""
        parts = name.split(".")
        if name == "gate.weight":
            self.router = tensor
        elif name == "experts.gate_up_proj":  # already stacked: [E, 2I, H]
            self.gate_up = self._local(tensor)
        elif name == "experts.down_proj":  # [E, H, I]
            self.down = self._local(tensor)
        elif len(parts) == 4 and parts[0] == "experts" and parts[3] == "weight":
            if parts[2] not in _EXPERT_PARTS or not parts[1].isdigit():
                return False
            expert = int(parts[1])
            if expert >= self.num_experts:
                return False
            if not self.first_expert <= expert < self.first_expert + self.num_local_experts:
                return True  # another rank's expert
            stack, slot = _EXPERT_PARTS[parts[2]]
            entry = self._pending.setdefault((stack, expert), [None, None])
            entry[slot or 0] = tensor
        elif self.has_shared_expert and name == "shared_expert_gate.weight":
            self.shared_gate = tensor
        elif self.has_shared_expert and len(parts) == 3 and parts[0] == "shared_expert":
            if parts[2] != "weight" or parts[1] not in ("gate_proj", "up_proj", "down_proj"):
                return False
            if parts[1] == "down_proj":
                self.shared_down = tensor
            else:
                self._pending_shared[parts[1] == "up_proj"] = tensor
        else:
            return False
        return True

    def _local(self, stacked: torch.Tensor) -> torch.Tensor:
        if not self.is_expert_subset or stacked.shape[0] != self.num_experts:
            return stacked
        return stacked[self.first_expert : self.first_expert + self.num_local_experts].clone()

    def finish_loading(self) -> list[str]:
        """Stack the per-expert tensors; the names of whatever is still missing."""
        missing = []
        if self._pending:
            gate_up, down = [], []
            for expert in range(self.first_expert, self.first_expert + self.num_local_experts):
                pair = self._pending.get(("gate_up", expert), [None, None])
                single = self._pending.get(("down", expert), [None, None])[0]
                if pair[0] is None or pair[1] is None or single is None:
                    missing.append(f"expert {expert}")
                    continue
                gate_up.append(torch.cat(pair, dim=0))
                down.append(single)
            if not missing:
                self.gate_up, self.down = torch.stack(gate_up), torch.stack(down)
            self._pending = {}
        if all(part is not None for part in self._pending_shared):
            self.shared_gate_up = torch.cat(self._pending_shared, dim=0)  # type: ignore[arg-type]
            self._pending_shared = [None, None]
        required = ["router", "gate_up", "down"]
        if self.has_shared_expert:
            required += ["shared_gate_up", "shared_down", "shared_gate"]
        missing += [name for name in required if getattr(self, name) is None]
        if not missing:
            self.expert_counts = torch.zeros(
                self.num_experts, dtype=torch.int64, device=self.router.device
            )
        return missing

    # ----- forward -------------------------------------------------------------------------

    def route(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights [num_tokens, top_k] float32, expert ids [num_tokens, top_k] int64)."""
        # Over ranks every rank must pick the same experts: F.linear, not linear, whose bf16
        # kernel choice is timed per process (tune_linear_dispatch) and may differ between ranks.
        router_linear = linear if self.all_reduce is None else F.linear
        probs = torch.softmax(router_linear(hidden, self.router).float(), dim=-1)
        weights, ids = probs.topk(self.top_k, dim=-1)
        if self.renormalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights, ids

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """The block's output for hidden [num_tokens, hidden_size] (already normalised); over
        ranks, the sum of every rank's part (the only all-reduce of the block)."""
        weights, ids = self.route(hidden)
        order, token_of, counts = self.dispatch(ids)
        rows = self.local_rows(counts)
        out = self.run_experts(hidden[token_of[rows.start : rows.stop]], counts)
        result = self.combine(hidden, out, weights, order[rows.start : rows.stop])
        if self.all_reduce is not None:
            self.all_reduce(result)
        return result

    def local_rows(self, counts: list[int]) -> range:
        """The expert-sorted assignments routed to this block's experts (all of them unless
        the block holds a subset): one contiguous run, as the experts are a contiguous range."""
        if not self.is_expert_subset:
            return range(0, sum(counts))
        start = sum(counts[: self.first_expert])
        return range(start, start + sum(counts[self.first_expert :][: self.num_local_experts]))

    def dispatch(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Group the (token, expert) assignments by expert: (the assignments in expert order,
        the token of each, how many each expert received); counts them in expert_counts."""
        flat_ids = ids.flatten()
        counts = torch.bincount(flat_ids, minlength=self.num_experts)
        if self.expert_counts is not None:
            self.expert_counts += counts
        order = flat_ids.argsort(stable=True)
        return order, order // self.top_k, counts.tolist()

    def run_experts(self, rows: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """Each local expert's SwiGLU over its run of the expert-sorted rows (one matmul pair
        each); rows are the local experts' runs (local_rows), counts cover every expert."""
        out = torch.empty_like(rows)
        start = 0
        local_counts = counts[self.first_expert : self.first_expert + self.num_local_experts]
        for local, count in enumerate(local_counts):
            if count == 0:
                continue
            end = start + count
            activated = silu_and_mul(linear(rows[start:end], self.gate_up[local]))
            out[start:end] = linear(activated, self.down[local])
            start = end
        return out

    def combine(
        self, hidden: torch.Tensor, out: torch.Tensor, weights: torch.Tensor, order: torch.Tensor
    ) -> torch.Tensor:
        """Put the expert rows back in (token, k) order, sum each token's top_k rows weighted by
        their routing weights, add the shared expert. order: the (token, k) slot of each row of
        out; slots without one (other ranks' experts) count as zeros."""
        num_slots = weights.numel()
        if order.shape[0] == num_slots:
            unsorted = torch.empty_like(out).index_copy_(0, order, out)
        else:
            unsorted = out.new_zeros(num_slots, out.shape[-1]).index_copy_(0, order, out)
        weighted = unsorted.view(-1, self.top_k, out.shape[-1]) * weights.unsqueeze(-1).to(
            out.dtype
        )
        result = weighted.sum(dim=1)
        if self.has_shared_expert:
            shared = linear(silu_and_mul(linear(hidden, self.shared_gate_up)), self.shared_down)
            result += torch.sigmoid(linear(hidden, self.shared_gate)) * shared
        return result

    def timed_phases(self, hidden: torch.Tensor) -> dict[str, float]:
        """Seconds of each phase of one call (for benchmarks/moe.py): routing, dispatch (sort
        and gather of the rows), experts, combine."""
        sync = torch.cuda.synchronize if hidden.is_cuda else (lambda: None)
        times = {}
        start = time.perf_counter()
        weights, ids = self.route(hidden)
        sync()
        times["routing"] = time.perf_counter() - start
        start = time.perf_counter()
        order, token_of, counts = self.dispatch(ids)
        local = self.local_rows(counts)
        order, rows = order[local.start : local.stop], hidden[token_of[local.start : local.stop]]
        sync()
        times["dispatch"] = time.perf_counter() - start
        start = time.perf_counter()
        out = self.run_experts(rows, counts)
        sync()
        times["experts"] = time.perf_counter() - start
        start = time.perf_counter()
        self.combine(hidden, out, weights, order)
        sync()
        times["combine"] = time.perf_counter() - start
        return times

    def reset_counts(self) -> None:
        if self.expert_counts is not None:
            self.expert_counts.zero_()
