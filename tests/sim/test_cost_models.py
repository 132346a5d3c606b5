"""Cost models: roofline arithmetic, shipped hardware specs, fitting and profile files."""

from __future__ import annotations

import json

import pytest

from corral.core.batch_shape import BatchShape
from corral.model.arch import ModelArch
from corral.sim.cost import CostModelOptions, make_cost_model
from corral.sim.cost.hardware import HardwareSpec, list_hardware, load_hardware
from corral.sim.cost.profiled import ProfiledCostModel
from corral.sim.cost.roofline import RooflineCostModel, layer_params

ARCH = ModelArch(
    architecture="LlamaForCausalLM",
    vocab_size=100,
    hidden_size=64,
    intermediate_size=128,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    max_position_embeddings=1024,
    tie_word_embeddings=True,
)
HARDWARE = HardwareSpec(
    name="unit",
    peak_flops={"bfloat16": 1e12},
    memory_bytes=1e9,
    memory_bandwidth_bytes_per_s=1e9,
    interconnect_bandwidth_bytes_per_s=1e8,
    interconnect_latency_s=1e-6,
    flops_efficiency=1.0,
    bandwidth_efficiency=1.0,
    step_overhead_s=0.001,
)


def test_layer_params_by_hand():
    # attention 64 * (64 + 2 * 32) + 64 * 64, MLP 3 * 64 * 128, two norms of 64; two layers
    assert layer_params(ARCH) == 2 * (12288 + 24576 + 128)


def test_decode_step_is_memory_bound():
    model = RooflineCostModel(ARCH, HARDWARE)
    step = model.step_time_s(BatchShape.of_chunks([(1, 9, True)]))
    weights = (73984 + 6400) * 2  # layer weights + LM head, bf16
    kv = 11 * (2 * 2 * 32 * 2)  # read 10 keys/values + write 1, per token K and V over 2 layers
    assert step == pytest.approx(0.001 + weights / 1e9 + kv / 1e9)


def test_large_prefill_is_compute_bound():
    slow = HARDWARE.with_overrides(peak_flops={"bfloat16": 1e9})
    model = RooflineCostModel(ARCH, slow)
    batch = BatchShape.of_chunks([(512, 0, True)])
    linear = (512 * 2 * 73984 + 2 * 6400) / 1e9
    attention = batch.prefill_attention_pairs * 4 * 2 * 4 * 16 / 1e9
    assert model.step_time_s(batch) == pytest.approx(0.001 + linear + attention)


def test_tensor_parallelism_splits_weights_and_pays_all_reduces():
    batch = BatchShape.of_chunks([(1, 9, True)] * 4)
    one = RooflineCostModel(ARCH, HARDWARE).step_time_s(batch)
    two = RooflineCostModel(ARCH, HARDWARE, tensor_parallel_size=2).step_time_s(batch)
    weights = (73984 + 6400) * 2
    kv = 4 * 11 * (2 * 2 * 32 * 2)
    # 2 all-reduces per layer of 4 tokens x 64 x 2 bytes, ring: 2 (tp-1)/tp of it per link
    comm = 2 * 2 * (4 * 64 * 2 * 1.0 / 1e8 + 2 * 1e-6)
    assert one == pytest.approx(0.001 + (weights + kv) / 1e9)
    assert two == pytest.approx(0.001 + (weights + kv) / 2 / 1e9 + comm)


def test_impossible_tensor_parallelism_is_refused():
    with pytest.raises(ValueError, match="do not split"):
        RooflineCostModel(ARCH, HARDWARE, tensor_parallel_size=3)
    with pytest.raises(ValueError, match="interconnect"):
        RooflineCostModel(
            ARCH,
            HARDWARE.with_overrides(interconnect_bandwidth_bytes_per_s=0.0),
            tensor_parallel_size=2,
        )
    with pytest.raises(ValueError, match="needs a model shape"):
        make_cost_model("roofline", CostModelOptions())
    with pytest.raises(ValueError, match="unknown cost model"):
        make_cost_model("astrology", CostModelOptions())


def test_shipped_hardware_specs_cite_their_sources():
    names = list_hardware()
    assert {"a100", "h100", "h200", "l40s", "mi300x"} <= set(names)
    for name in names:
        spec = load_hardware(name)
        assert spec.sources and spec.peak_flops["bfloat16"] > 0
    h100 = load_hardware("H100")
    assert h100.peak_flops["bfloat16"] == 989.4e12
    assert h100.memory_bandwidth_bytes_per_s == 3.35e12
    assert h100.max_power_w == 700
    with pytest.raises(ValueError, match="unknown hardware"):
        load_hardware("tpu-v9")


def test_fit_recovers_a_known_model():
    truth = ProfiledCostModel(
        ["intercept", "tokens", "tokens_over_64", "decode_context_tokens", "sampled_requests"],
        [0.02, 0.001, -0.0004, 2e-6, 0.0005],
    )
    batches = [
        BatchShape.of_chunks([(1, c, True)] * d + ([(p, 0, True)] if p > 1 else []))
        for d in (0, 1, 4, 16)
        for c in (10, 200)
        for p in (0, 16, 128, 512)
        if d or p
    ]
    fitted = ProfiledCostModel.fit(
        [(b, truth.step_time_s(b)) for b in batches], features=truth.features
    )
    assert fitted.coefficients == pytest.approx(truth.coefficients, rel=1e-6, abs=1e-12)
    assert fitted.metadata["fit"]["mean_abs_rel_error"] < 1e-9


def test_profile_file_round_trip_and_errors(tmp_path):
    model = ProfiledCostModel(["intercept", "prefill_tokens"], [0.01, 0.002], min_step_s=0.001)
    model.metadata = {"engine": {"num_blocks": 99}}
    path = tmp_path / "profile.json"
    model.save(path)
    loaded = ProfiledCostModel.load(path)
    assert loaded.coefficients == [0.01, 0.002] and loaded.metadata["engine"]["num_blocks"] == 99
    batch = BatchShape.of_chunks([(100, 0, True)])
    assert loaded.step_time_s(batch) == model.step_time_s(batch) == pytest.approx(0.21)
    (tmp_path / "other.json").write_text(json.dumps({"kind": "something else"}))
    with pytest.raises(ValueError, match="not a corral step profile"):
        ProfiledCostModel.load(tmp_path / "other.json")
    with pytest.raises(ValueError, match="unknown cost feature"):
        ProfiledCostModel(["tokens_squared"], [1.0])
    with pytest.raises(ValueError, match="2 features but 1"):
        ProfiledCostModel(["intercept", "tokens"], [1.0])


def test_fit_drops_steps_slowed_by_another_process():
    truth = ProfiledCostModel(["intercept", "tokens"], [0.02, 0.001])
    batches = [BatchShape.of_chunks([(n, 0, True)]) for n in range(2, 60)]
    samples = [
        (b, truth.step_time_s(b) * (1 + 0.01 * ((i % 5) - 2))) for i, b in enumerate(batches)
    ]
    for i in (3, 17, 40):
        samples[i] = (samples[i][0], samples[i][1] * 3)  # a contended step
    fitted = ProfiledCostModel.fit(samples, features=truth.features, target="typical")
    assert fitted.metadata["fit"]["num_outliers_dropped"] == 3
    assert fitted.coefficients == pytest.approx(truth.coefficients, rel=0.03)
    naive = ProfiledCostModel.fit(
        samples, features=truth.features, target="typical", outlier_mads=None
    )
    assert naive.metadata["fit"]["num_outliers_dropped"] == 0

    def distance(model: ProfiledCostModel) -> float:
        pairs = zip(model.coefficients, truth.coefficients)
        return sum(abs(fit / true - 1) for fit, true in pairs)

    assert distance(naive) > 2 * distance(fitted)


def test_the_mean_fit_predicts_mean_step_times_where_steps_are_noisy():
    # Every fourth step of each shape runs 60% slow (a neighbour on the machine): the served
    # requests live through those too, so the sums of predicted times must match the measured.
    truth = ProfiledCostModel(["intercept", "tokens"], [0.02, 0.001])
    samples = [
        (batch, truth.step_time_s(batch) * (1.6 if repeat == 0 else 1.0))
        for batch in (BatchShape.of_chunks([(n, 0, True)]) for n in range(2, 200, 7))
        for repeat in range(4)
    ]
    mean = ProfiledCostModel.fit(samples, features=truth.features)
    assert mean.metadata["fit"]["target"] == "mean"
    assert mean.metadata["fit"]["num_outliers_dropped"] == 0
    assert mean.metadata["fit"]["total_time_ratio"] == pytest.approx(1.0, abs=0.005)
    # The mean of each shape is 1.15 x its uncontended time.
    assert mean.coefficients == pytest.approx([0.02 * 1.15, 0.001 * 1.15], rel=0.01)
    typical = ProfiledCostModel.fit(samples, features=truth.features, target="typical")
    assert typical.metadata["fit"]["total_time_ratio"] < 0.9
    with pytest.raises(ValueError, match="fit target"):
        ProfiledCostModel.fit(samples, features=truth.features, target="median")
