"""Weight offloading in the simulator (corral/sim/cost/offload.py): the engine's choice of layers,
a step of max(compute, offloaded bytes / bandwidth), the freed device memory in the KV pool, and
the flags of `corral simulate run`."""

from __future__ import annotations

import json

import pytest

from corral.core.batch_shape import BatchShape
from corral.model.offload_plan import plan_offloaded_layers
from corral.sim.config import ClusterSpec
from corral.sim.cost.offload import OffloadedWeightsCost, OffloadPlan
from corral.sim.deployment import DeploymentOptions, build_cluster
from corral.sim.model_shapes import load_model_shape
from tests.sim.helpers import LINEAR_PROFILE, instance, run, spec, workload
from tests.sim.test_cli_and_profile import main


def test_plan_is_the_engines_and_frees_all_but_two_buffers():
    arch = load_model_shape("llama-3.1-8b")
    layer_bytes = arch.layer_num_params(0) * 2
    plan = OffloadPlan.for_arch(arch, 2, num_layers=8)
    assert list(plan.layer_ids) == plan_offloaded_layers(arch, 2, 8, 0.0)
    assert plan.offloaded_bytes == 8 * layer_bytes
    assert plan.device_bytes_freed == 6 * layer_bytes
    assert OffloadPlan.for_arch(arch, 2, num_layers=2).device_bytes_freed == 0
    by_size = OffloadPlan.for_arch(arch, 2, num_gib=3 * layer_bytes / 2**30)
    assert len(by_size.layer_ids) == 3
    with pytest.raises(ValueError, match="tensor parallelism"):
        OffloadPlan.for_arch(arch, 2, num_layers=2, tensor_parallel_size=2)


def test_step_is_the_longer_of_compute_and_transfer():
    batch = BatchShape(num_prefill_tokens=100)  # 10 ms + 100 x 1 ms = 110 ms of compute
    compute = LINEAR_PROFILE.step_time_s(batch)
    assert OffloadedWeightsCost(LINEAR_PROFILE, 10**6, 1e12).step_time_s(batch) == compute
    slow = OffloadedWeightsCost(LINEAR_PROFILE, 10**9, 1e9)  # 1 s per step to stream
    assert slow.step_time_s(batch) == pytest.approx(1.0)
    assert slow.describe()["offloaded_bytes"] == 10**9
    with pytest.raises(ValueError, match="bandwidth must be > 0"):
        OffloadedWeightsCost(LINEAR_PROFILE, 1, 0.0)
    # A CPU maps the pages in itself: that time adds to the compute.
    cpu = OffloadedWeightsCost(LINEAR_PROFILE, 10**8, 1e12, cpu_bytes_per_s=1e9)
    assert cpu.step_time_s(batch) == pytest.approx(compute + 0.1)
    disk_bound = OffloadedWeightsCost(LINEAR_PROFILE, 10**8, 1e8, cpu_bytes_per_s=1e9)
    assert disk_bound.step_time_s(batch) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="CPU rate must be > 0"):
        OffloadedWeightsCost(LINEAR_PROFILE, 1, 1.0, cpu_bytes_per_s=-1.0)


def test_streaming_bound_steps_slow_decoding_down():
    work = workload(*(spec(f"r{i}", 0.0, 64, 50) for i in range(4)))
    plain = run(ClusterSpec(instances=(instance(),)), work)
    # 40 ms of streaming per step against 14 ms of decode compute (4 rows): 40 ms steps.
    offloaded = instance(cost_model=OffloadedWeightsCost(LINEAR_PROFILE, 4 * 10**7, 1e9))
    slow = run(ClusterSpec(instances=(offloaded,)), work)
    assert [r.num_output_tokens for r in slow.records] == [50] * 4
    plain_tpot = plain.records[0].tpot_s
    slow_tpot = slow.records[0].tpot_s
    assert plain_tpot == pytest.approx(0.014) and slow_tpot == pytest.approx(0.040)


def test_roofline_deployment_gives_freed_memory_to_the_kv_pool():
    base = DeploymentOptions(model="llama-3.1-8b", hardware="l40s")
    offloaded = base.with_changes(offload_layers=16)
    plain_instance = build_cluster(base).instances[0]
    offload_instance = build_cluster(offloaded).instances[0]
    arch = load_model_shape("llama-3.1-8b")
    freed = OffloadPlan.for_arch(arch, 2, num_layers=16).device_bytes_freed
    per_block = arch.kv_bytes_per_token(2) * 16
    assert offload_instance.num_blocks - plain_instance.num_blocks == pytest.approx(
        freed / per_block, abs=1
    )
    batch = BatchShape(num_decode_requests=8, decode_context_tokens=8000, num_sampled=8)
    link = 32e9  # the l40s spec names no link: the PCIe 4.0 default
    assert offload_instance.cost_model.step_time_s(batch) == pytest.approx(
        max(plain_instance.cost_model.step_time_s(batch), 16 * arch.layer_num_params(0) * 2 / link)
    )


def test_simulate_run_flags(tmp_path, caplog):
    out = tmp_path / "report.json"
    argv = ["simulate", "run", "--dataset", "random", "--num-requests", "8"]
    argv += ["--input-len", "100", "--output-len", "10", "--model", "smollm-135m"]
    flags = ["--offload-layers", "10", "--offload-gb-s", "2", "--offload-cpu-gb-s", "20"]
    assert main(argv + flags + ["--result-json", str(out)]) == 0
    cost_model = json.loads(out.read_text())["cost_model"]
    assert cost_model["offloaded_bytes"] > 0
    assert cost_model["offload_bandwidth_bytes_per_s"] == 2e9
    assert cost_model["offload_cpu_bytes_per_s"] == 20e9
    assert main(argv + ["--offload-layers", "31"]) == 2
    assert "offload_layers 31 is more than the model's 30 layers" in caplog.text
