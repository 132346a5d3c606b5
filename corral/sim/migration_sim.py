"""Live migration in the simulator: the router's rebalancing on simulated instances.

Every rebalance_interval_s of virtual time, pick_rebalance (corral/core/migration.py, the rule
`corral router --rebalance-kv-usage` applies to its replicas' scraped KV usage) picks a source
and a target among the serving instances by KV usage; the source's scheduler moves its largest
migratable request out with the engine's own migrate_out (its KV connector lends the computed
blocks), and the request goes on at the target after the request path, carrying the lease: the
target's connector fetches the blocks over the simulated link (corral/sim/kv_transfer_sim.py),
computes the tokens after the last full block and generates the rest of the output.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from corral.core.migration import (
    choose_migrations,
    migrate_out,
    pick_rebalance,
    rebalance_max_num_tokens,
)
from corral.kv_transfer.params import Resume

if TYPE_CHECKING:
    from corral.sim.cluster import ClusterSimulator
    from corral.sim.instance import SimInstance


class SimRebalancer:
    """Moves requests between a cluster's instances (see the module docstring)."""

    def __init__(self, cluster: ClusterSimulator, kv_usage_high: float) -> None:
        self.cluster = cluster
        self.kv_usage_high = kv_usage_high
        self.interval_s = cluster.spec.rebalance_interval_s
        self.min_gap = cluster.spec.rebalance_min_gap
        self.num_moved = 0

    def start(self) -> None:
        self.cluster.call_at(self.cluster.now + self.interval_s, self.tick)

    def tick(self) -> None:
        cluster = self.cluster
        pool: list[SimInstance] = cluster.decode_pool
        usages = [i.kv.usage for i in pool]
        waiting = [i.scheduler.num_waiting for i in pool]
        pair = pick_rebalance(usages, self.kv_usage_high, self.min_gap, waiting)
        if pair is not None:
            source, target = pool[pair[0]], pool[pair[1]]
            capacity = source.kv.num_blocks * source.kv.block_size
            max_tokens = rebalance_max_num_tokens(source.kv.usage, target.kv.usage, capacity)
            self.move(source, target, max_tokens)
        if not cluster.is_done():
            cluster.call_at(cluster.now + self.interval_s, self.tick)

    def move(self, source: SimInstance, target: SimInstance, max_num_tokens: int | None) -> bool:
        """Move source's largest migratable request (of at most max_num_tokens) to target;
        False when none may move."""
        chosen = choose_migrations(source.scheduler.running, 1, (), max_num_tokens)
        if not chosen:
            return False
        request = chosen[0]
        (update,) = migrate_out(source.scheduler, 1, [request.request_id])
        resume = update.kv_transfer_params
        assert isinstance(resume, Resume)
        cluster = self.cluster
        cluster.wake(source)  # its next step opens the lease
        spec = cluster.request_spec(request.request_id)
        moved = cluster.make_request(spec, request.prompt_token_ids, resume.remote)
        for token_id in resume.output_token_ids:
            moved.append_output_token(token_id)
        self.num_moved += 1
        delay = cluster.spec.request_path_s  # the router sends it on
        cluster.call_at(cluster.now + delay, lambda: cluster.assign(target, moved))
        return True
