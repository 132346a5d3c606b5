"""The kernels' parallel-work threshold follows OpenMP's wait policy, and splitting work across
threads never changes a result's bits."""

from __future__ import annotations

import pytest
import torch

from corral.model import kernels as kernels_module
from corral.model.kernels import cpu_kernels
from corral.model.packed_weight import PackedWeight

pytestmark = pytest.mark.skipif(cpu_kernels() is None, reason="CPU kernels unavailable")


def test_threshold_follows_the_wait_policy(monkeypatch) -> None:
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert kernels_module.min_parallel_work() == kernels_module.MIN_PARALLEL_WORK_PASSIVE
    for policy in ("active", ""):
        monkeypatch.setenv("OMP_WAIT_POLICY", policy)
        assert kernels_module.min_parallel_work() == kernels_module.MIN_PARALLEL_WORK_SPINNING
    assert kernels_module.MIN_PARALLEL_WORK_SPINNING < kernels_module.MIN_PARALLEL_WORK_PASSIVE


@pytest.mark.parametrize("rows", [1, 3, 5, 32])
def test_splitting_a_linear_keeps_its_bits(rows: int) -> None:
    kernels = cpu_kernels()
    generator = torch.Generator().manual_seed(5)
    weight = (torch.randn(1024, 576, generator=generator) * 0.2).bfloat16()
    x = torch.randn(rows, 576, generator=generator).bfloat16()
    # Every layout this build reads (panels where the CPU lacks bf16 dot products, AMX tiles
    # where it has AMX) and the plain one.
    weights = {"plain": weight}
    if kernels.packed_weights_supported():
        weights["panels"] = PackedWeight.pack(weight, "panels").data
    if kernels.amx_tiles_supported():
        weights["tiles"] = PackedWeight.pack(weight, "tiles").data
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        results: dict[str, list[torch.Tensor]] = {layout: [] for layout in weights}
        for work in (1 << 30, 1):  # never split; split at every panel, tile pair or quad
            kernels.set_min_parallel_work(work)
            for layout, values in weights.items():
                results[layout].append(kernels.few_row_linear(x, values, None))
    finally:
        kernels.set_min_parallel_work(kernels_module.min_parallel_work())
        torch.set_num_threads(threads)
    for layout, (whole, split) in results.items():
        assert torch.equal(whole, split), layout
