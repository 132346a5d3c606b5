"""Multi-LoRA in the simulator: the engine's adapter admission runs unchanged, adapter loads and
LoRA compute are priced, the report counts them (no torch)."""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, replace

import pytest

from corral.cli import main
from corral.config import LoRAConfig, SchedulerConfig
from corral.core.adapter_residency import AdapterLoad, AdapterPlan
from corral.sim.api import simulate
from corral.sim.cluster import ClusterSimulator, SimResult
from corral.sim.cost.adapter_loads import AdapterLoadCost
from corral.sim.cost.lora import LoRACost, LoRAShape, adapter_width
from corral.sim.cost.profiled import ProfiledCostModel
from corral.sim.cost.roofline import layer_params
from corral.sim.deployment import DeploymentOptions, build_cluster
from corral.sim.lora import LoRASimOptions
from corral.sim.lora_workload import AdapterAssignment, parse_distribution, synthetic_adapters
from corral.sim.model_shapes import load_model_shape
from corral.sim.report import build_report
from corral.workloads import ArrivalOptions, WorkloadOptions, build_workload
from corral.workloads.spec import RequestSpec

LLAMA_8B = load_model_shape("llama-3.1-8b")


def workload(num_requests: int = 120, rate: float = 30.0, seed: int = 0, **fields):
    options = dict(
        dataset="random",
        num_requests=num_requests,
        input_len=200,
        output_len=24,
        range_ratio=0.5,
        seed=seed,
        arrival=ArrivalOptions("poisson", rate=rate),
        vocab_size=32000,
    )
    options.update(fields)
    return build_workload(WorkloadOptions(**options))


def lora(num_adapters: int = 8, max_loras: int = 4, **fields) -> LoRASimOptions:
    config_fields = {
        key: fields.pop(key)
        for key in ("max_cpu_loras", "max_num_lora_bypasses", "max_lora_rank")
        if key in fields
    }
    config = LoRAConfig(enable_lora=True, max_loras=max_loras, **config_fields)
    return LoRASimOptions(config=config, num_adapters=num_adapters, **fields)


def deployment(lora_options: LoRASimOptions | None = None, **fields) -> DeploymentOptions:
    options = dict(
        model="llama-3.1-8b",
        hardware="h100",
        max_model_len=4096,
        num_blocks=4096,  # a small pool keeps the integrity checks after each step fast
        scheduler=SchedulerConfig(max_num_seqs=64, max_num_batched_tokens=2048),
        check_integrity=True,
        lora=lora_options,
    )
    options.update(fields)
    return DeploymentOptions(**options)


def run(work, options: DeploymentOptions, before_step=None, after_step=None) -> SimResult:
    """Simulate; before_step(instance, scheduler_output) sees each step once it is scheduled,
    after_step(instance, scheduler_output, model_output) once it is priced."""
    simulator = ClusterSimulator(build_cluster(options), work)
    for instance in simulator.instances:
        execute = instance.executor.execute

        def checked(scheduler_output, instance=instance, execute=execute):
            if before_step is not None:
                before_step(instance, scheduler_output)
            model_output = execute(scheduler_output)
            if after_step is not None:
                after_step(instance, scheduler_output, model_output)
            return model_output

        instance.executor.execute = checked
    return simulator.run()


# ----- the cost terms ------------------------------------------------------------------------


def test_synthetic_adapter_size_follows_the_model_shape():
    cost = LoRACost.for_arch(LLAMA_8B, dtype_bytes=2, flops_per_s=1e15, bytes_per_s=1e12)
    # Llama-3.1-8B: q, o 4096 + 4096; k, v 4096 + 1024; gate, up 4096 + 14336; down 14336 + 4096.
    assert adapter_width(LLAMA_8B) == 32 * (2 * 8192 + 2 * 5120 + 3 * 18432)
    (adapter,) = synthetic_adapters(1, 16, cost)
    assert adapter.name == "adapter-0" and adapter.path == "sim://adapter-0"
    assert adapter.num_params == 16 * 32 * 81920 == 41_943_040
    assert adapter.num_bytes == 2 * adapter.num_params
    assert adapter.key.startswith("adapter-0@") and len(adapter.content_sha256) == 64
    assert synthetic_adapters(1, 16, cost) == (adapter,)  # a fixed fake hash


def test_lora_compute_term_is_a_roofline_plus_segment_overhead():
    cost = LoRACost.for_arch(
        LLAMA_8B,
        dtype_bytes=2,
        flops_per_s=1e14,
        bytes_per_s=1e12,
        segment_overhead_s=1e-5,
        tensor_parallel_size=2,
    )
    width = adapter_width(LLAMA_8B)
    # 2 segments of rank 16: 100 tokens on one, 3 on the other.
    shape = LoRAShape(num_tokens=103, num_segments=2, rank_tokens=103 * 16, rank_sum=32)
    flops = 2 * 16 * width * 103 / 2
    read_bytes = 32 * width * 2 / 2
    assert cost.flops(shape) == flops and cost.bytes(shape) == read_bytes
    assert cost.time_s(shape) == pytest.approx(max(flops / 1e14, read_bytes / 1e12) + 2e-5)
    assert cost.time_s(LoRAShape()) == 0.0


def test_adapter_loads_from_disk_pay_the_read_and_the_copy():
    cost = LoRACost.for_arch(LLAMA_8B, dtype_bytes=2, flops_per_s=1e15, bytes_per_s=1e12)
    first, second = synthetic_adapters(2, 8, cost)
    loads = AdapterLoadCost(
        disk_read_bandwidth_bytes_per_s=2e9, host_to_device_bandwidth_bytes_per_s=32e9
    )
    plan = AdapterPlan([AdapterLoad(0, first, True), AdapterLoad(1, second, False)], ["x"])
    num_bytes = first.num_bytes
    assert loads.time_s(plan) == pytest.approx(num_bytes / 2e9 + 2 * num_bytes / 32e9)
    sharded = replace(loads, tensor_parallel_size=4)
    assert sharded.load_time_s(num_bytes, False) == pytest.approx(num_bytes / (4 * 32e9))


def test_profiled_model_prices_lora_at_the_rates_its_fit_implies(tmp_path):
    arch = load_model_shape("smollm-135m")
    metadata = {
        "arch": asdict(arch),
        "engine": {"dtype_bytes": 2, "device": "cpu", "num_blocks": 512, "max_model_len": 1024},
    }
    model = ProfiledCostModel(
        ["intercept", "tokens", "tokens_over_64"], [0.02, 0.004, -0.001], metadata=metadata
    )
    cost = model.lora_cost(segment_overhead_s=0.0)
    assert cost.flops_per_s == pytest.approx(2 * layer_params(arch) / 0.003)
    weight_bytes = (layer_params(arch) + arch.hidden_size * arch.vocab_size) * 2
    assert cost.bytes_per_s == pytest.approx(weight_bytes / 0.02)
    with pytest.raises(ValueError, match="no model shape"):
        ProfiledCostModel(["intercept"], [0.01]).lora_cost(0.0)
    # A whole run on the profile: a CPU device copies adapters at half that bandwidth.
    path = tmp_path / "profile.json"
    model.save(path)
    options = deployment(
        lora(num_adapters=4, max_loras=2),
        cost_model="profiled",
        profile_path=str(path),
        scheduler=SchedulerConfig(max_num_seqs=16, max_num_batched_tokens=512),
    )
    cluster = build_cluster(options)
    assert cluster.instances[0].lora.loads.host_to_device_bandwidth_bytes_per_s == pytest.approx(
        weight_bytes / 0.02 / 2
    )
    report = simulate(workload(40, rate=2.0, input_len=100, output_len=8), options)
    assert report.lora is not None and report.lora.num_loads > 0
    assert report.lora.compute_time_s > 0 and report.lora.load_time_s > 0


# ----- the workload's adapters -----------------------------------------------------------------


def test_assignment_is_seeded_follows_zipf_and_keeps_a_conversation_on_one_adapter():
    cost = LoRACost.for_arch(LLAMA_8B, dtype_bytes=2, flops_per_s=1e15, bytes_per_s=1e12)
    adapters = synthetic_adapters(5, 16, cost)
    specs = [RequestSpec(f"r{i}", float(i), 10, 2) for i in range(4000)]
    zipf = AdapterAssignment(adapters, "zipf:1.2", base_fraction=0.25, seed=3)
    first = zipf.assign(specs)
    assert first == zipf.assign(specs)
    assert first != replace(zipf, seed=4).assign(specs)
    counts = [sum(a is adapter for a in first.values()) for adapter in adapters]
    num_base = sum(a is None for a in first.values())
    assert counts == sorted(counts, reverse=True) and counts[0] > 2 * counts[2]
    assert 0.2 < num_base / len(specs) < 0.3
    uniform = AdapterAssignment(adapters, "uniform", seed=3).assign(specs)
    assert all(a is not None for a in uniform.values())
    turns = [
        RequestSpec(f"c{c}-t{t}", float(t), 10, 2, conversation_id=f"c{c}", turn_index=t)
        for c in range(50)
        for t in range(3)
    ]
    by_turn = AdapterAssignment(adapters, "uniform", seed=1).assign(turns)
    for c in range(50):
        assert by_turn[f"c{c}-t0"] is by_turn[f"c{c}-t1"] is by_turn[f"c{c}-t2"]
    assert parse_distribution("zipf:0.8") == 0.8
    for bad in ("zipf", "zipf:0", "zipf:x", "pareto:1"):
        with pytest.raises(ValueError, match="uniform or zipf"):
            parse_distribution(bad)


def test_adapters_of_real_peft_directories_join_the_pool_with_their_sizes(tmp_path):
    arch = load_model_shape("llama-3.1-8b")
    rank = 4
    tensors = {
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": [rank, arch.hidden_size],
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": [arch.q_size, rank],
    }
    header, offset = {}, 0
    for name, shape in tensors.items():
        size = shape[0] * shape[1] * 2
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    adapter_dir = tmp_path / "sql"
    adapter_dir.mkdir()
    (adapter_dir / "adapter_config.json").write_text(json.dumps({"r": rank, "lora_alpha": 8}))
    (adapter_dir / "adapter_model.safetensors").write_bytes(
        struct.pack("<Q", len(blob)) + blob + bytes(offset)
    )
    config = LoRAConfig(max_loras=2, lora_modules=(("sql", str(adapter_dir)),))
    options = deployment(LoRASimOptions(config=config, num_adapters=1))
    adapters = build_cluster(options).adapter_assignment.adapters
    assert [a.name for a in adapters] == ["sql", "adapter-0"]
    assert adapters[0].num_bytes == offset and adapters[0].rank == rank
    report = simulate(workload(20), options)
    assert report.lora.num_loads >= 2


# ----- whole runs --------------------------------------------------------------------------------


def test_same_seed_same_metrics():
    options = deployment(lora(distribution="zipf:1.0", base_fraction=0.2))
    first, second = simulate(workload(), options), simulate(workload(), options)
    assert first.summary.to_dict() == second.summary.to_dict()
    assert first.instances == second.instances and first.lora == second.lora
    other = simulate(workload(), replace(options, lora=replace(options.lora, seed=5)))
    assert other.lora != first.lora


def test_lora_adds_loads_and_step_time_over_the_same_workload_without_adapters():
    work = workload()
    base = simulate(work, deployment())
    with_lora = simulate(work, deployment(lora(num_adapters=4, max_loras=4)))
    assert base.lora is None
    stats = with_lora.lora
    assert stats.num_loads >= 4 and stats.num_disk_loads == 4  # each adapter read once
    assert stats.load_time_s > 0 and stats.compute_time_s > 0
    # Every token through an adapter once (random prompts share no prefix; no preemption).
    assert stats.num_lora_tokens == sum(s.num_prompt_tokens + s.num_output_tokens - 1 for s in work)
    base_busy_s = sum(i.busy_time_s for i in base.instances)
    lora_busy_s = sum(i.busy_time_s for i in with_lora.instances)
    assert lora_busy_s > base_busy_s
    assert with_lora.summary.tpot.mean_ms > base.summary.tpot.mean_ms

    # Each step is priced at its base step plus exactly its adapters' loads and compute.
    steps = {"priced": 0, "with_adapters": 0}

    def check(instance, scheduler_output, model_output):
        executor = instance.executor
        if executor.last_batch is None:
            return
        base_s = executor.cost_model.step_time_s(executor.last_batch)
        shape = executor.lora.last_shape
        extra_s = executor.lora.compute.time_s(shape)
        if scheduler_output.adapter_plan is not None:
            extra_s += executor.lora.loads.time_s(scheduler_output.adapter_plan)
        assert model_output.step_time_s == pytest.approx(base_s + extra_s)
        if shape.num_tokens:
            assert model_output.step_time_s > base_s
            steps["with_adapters"] += 1
        steps["priced"] += 1

    run(workload(30), deployment(lora(num_adapters=4, max_loras=4)), after_step=check)
    assert steps["with_adapters"] == steps["priced"] > 10


def test_lora_on_with_every_request_on_the_base_model_changes_nothing():
    work = workload()
    base = simulate(work, deployment())
    all_base = simulate(work, deployment(lora(base_fraction=1.0)))
    assert all_base.summary.to_dict() == base.summary.to_dict()
    assert [i.busy_time_s for i in all_base.instances] == [i.busy_time_s for i in base.instances]
    assert all_base.lora.num_loads == 0 and all_base.lora.compute_time_s == 0.0


@pytest.mark.parametrize("max_num_lora_bypasses", [0, 32])
def test_one_slot_thrashes_more_and_serves_less_than_eight(max_num_lora_bypasses):
    # With the fairness bound 0 admission is strictly in order: an adapter switch per run of
    # requests; with 32, requests of the resident adapter may go first (fewer switches).
    work = workload(160, rate=200.0)
    bound = dict(max_num_lora_bypasses=max_num_lora_bypasses)
    one = simulate(work, deployment(lora(num_adapters=8, max_loras=1, **bound)))
    eight = simulate(work, deployment(lora(num_adapters=8, max_loras=8, **bound)))
    assert eight.lora.num_loads == eight.lora.num_disk_loads == 8
    assert one.lora.num_loads > eight.lora.num_loads
    assert one.lora.load_time_s > eight.lora.load_time_s
    assert eight.lora.num_slot_evictions == 0
    assert one.summary.output_throughput < eight.summary.output_throughput
    assert one.summary.ttft.mean_ms > eight.summary.ttft.mean_ms


@pytest.mark.parametrize("max_loras", [1, 3])
def test_admission_never_holds_more_adapters_than_slots(max_loras):
    seen = {"steps": 0, "max_in_use": 0}

    def before_step(instance, scheduler_output):
        residency = instance.scheduler.adapters.residency
        residency.check_integrity()
        running = {r.lora.key for r in instance.scheduler.running if r.lora is not None}
        assert residency.num_resident <= max_loras
        assert len(running) <= max_loras
        assert running <= {key for key in residency.slot_keys if key is not None}
        for request in instance.scheduler.running:
            if request.lora is not None:
                assert residency.slot_keys[request.lora_slot] == request.lora.key
        seen["steps"] += 1
        seen["max_in_use"] = max(seen["max_in_use"], len(running))

    work = workload(100, rate=100.0)
    result = run(work, deployment(lora(num_adapters=6, max_loras=max_loras)), before_step)
    assert seen["steps"] > 20 and seen["max_in_use"] == max_loras
    (instance,) = result.instances
    assert instance.scheduler.adapters.residency.num_in_use == 0


def test_tokens_and_blocks_are_conserved_with_adapters_and_preemption():
    work = workload(60, rate=200.0)
    options = deployment(
        lora(num_adapters=5, max_loras=2, base_fraction=0.3),
        num_blocks=48,
        max_model_len=512,
        enable_prefix_caching=False,
    )
    result = run(work, options)
    for record, spec in zip(result.records, work):
        assert record.num_output_tokens == spec.num_output_tokens
    (instance,) = result.instances
    num_free, num_cached, num_in_use = instance.kv.pool.check_integrity()
    assert num_in_use == 0 and num_free + num_cached == 48
    assert instance.scheduler.num_preemptions > 0
    assert not instance.scheduler.has_unfinished_requests()
    report = build_report(result)
    assert report.lora.num_loads > 0
    # Preempted requests recompute, so at least every token once through its adapter.
    adapters = result.spec.adapter_assignment.assign(work.specs)
    lora_tokens = sum(
        s.num_prompt_tokens + s.num_output_tokens - 1 for s in work if adapters[s.request_id]
    )
    assert report.lora.num_lora_tokens >= lora_tokens


def test_fairness_bound_zero_means_no_bypass():
    work = workload(120, rate=200.0)
    bounded = simulate(work, deployment(lora(8, 2, max_num_lora_bypasses=0)))
    free = simulate(work, deployment(lora(8, 2, max_num_lora_bypasses=32)))
    assert bounded.lora.num_bypasses == 0
    assert free.lora.num_bypasses > 0
    assert bounded.summary.num_completed == free.summary.num_completed == 120


def test_disaggregated_instances_load_adapters_on_both_sides():
    options = deployment(lora(4, 2), num_prefill_instances=1, num_decode_instances=1)
    report = simulate(workload(40), options)
    assert report.summary.num_completed == 40
    assert all(i.lora is not None and i.lora.num_loads > 0 for i in report.instances)


# ----- the command line ---------------------------------------------------------------------

BASE_ARGS = [
    "simulate",
    "run",
    "--dataset",
    "random",
    "--num-requests",
    "40",
    "--input-len",
    "100",
    "--output-len",
    "8",
    "--request-rate",
    "50",
    "--model",
    "llama-3.1-8b",
    "--hardware",
    "h100",
]


def test_cli_flags_turn_lora_on_and_report_it(tmp_path, capsys):
    out = tmp_path / "sim.json"
    flags = ["--lora-num-adapters", "6", "--lora-distribution", "zipf:1.1", "--max-loras", "2"]
    assert main([*BASE_ARGS, *flags, "--max-cpu-loras", "3", "--result-json", str(out)]) == 0
    assert "multi-LoRA: " in capsys.readouterr().out
    document = json.loads(out.read_text())
    stats = document["lora"]
    assert stats["num_loads"] > 0 and stats["num_host_evictions"] > 0
    assert document["instances"][0]["lora"]["num_loads"] == stats["num_loads"]
    assert main(BASE_ARGS) == 0
    assert "multi-LoRA" not in capsys.readouterr().out
    assert main([*BASE_ARGS, "--lora-num-adapters", "2", "--lora-rank", "32"]) == 2
    assert main([*BASE_ARGS, "--lora-num-adapters", "2", "--lora-distribution", "zipf"]) == 2
