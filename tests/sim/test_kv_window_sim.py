"""The simulator drops blocks behind a bounded attention window with the engine's scheduler, and
prices each query at the keys it attends to (corral/core/kv_window.py)."""

from __future__ import annotations

import pytest

from corral.config import SchedulerConfig
from corral.core.kv_window import KVWindow
from corral.sim.config import ClusterSpec, InstanceSpec
from corral.sim.cost.profiled import ProfiledCostModel
from tests.sim.helpers import LINEAR_PROFILE, run, spec, workload

# step time = 10 ms + 1 us per attended (query, key) pair of prefill + per decode key
ATTENTION_PROFILE = ProfiledCostModel(
    ["intercept", "prefill_attention_pairs", "decode_context_tokens"], [0.010, 1e-6, 1e-6]
)


def long_streams():
    return workload(*(spec(f"r{i}", 0.0, 600, 3000) for i in range(3)))


def windowed_instance(num_blocks: int, window: KVWindow | None, **fields) -> InstanceSpec:
    return InstanceSpec(
        cost_model=fields.pop("cost_model", LINEAR_PROFILE),
        num_blocks=num_blocks,
        max_model_len=4096,
        scheduler=SchedulerConfig(max_num_batched_tokens=256),
        kv_window=window,
    )


def test_streams_longer_than_the_pool_finish_with_a_window():
    # 64 blocks of 16 = 1024 slots; each request reaches 3600 tokens, 3 at once.
    with_window = windowed_instance(64, KVWindow(256, 4))
    result = run(ClusterSpec(instances=(with_window,), check_integrity=True), long_streams())
    assert len(result.records) == 3
    assert all(r.num_output_tokens == 3000 for r in result.records)
    # Without a window the engine's admission rule refuses the pool for this context.
    with pytest.raises(ValueError, match="exceed the KV pool's capacity"):
        windowed_instance(64, None)


def test_a_window_shortens_priced_steps():
    base = windowed_instance(1024, None, cost_model=ATTENTION_PROFILE)
    windowed = windowed_instance(1024, KVWindow(256, 4), cost_model=ATTENTION_PROFILE)
    full = run(ClusterSpec(instances=(base,)), long_streams())
    short = run(ClusterSpec(instances=(windowed,)), long_streams())
    assert short.end_time_s < 0.8 * full.end_time_s


def test_instance_refuses_a_window_whose_live_bound_exceeds_the_pool():
    with pytest.raises(ValueError, match="within the attention window"):
        windowed_instance(16, KVWindow(1024))
