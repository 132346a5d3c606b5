"""`corral simulate` end to end, and profiling a tiny real engine."""

from __future__ import annotations

import argparse
import json

import pytest

from corral.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
from corral.sim import cli
from corral.sim.api import simulate
from corral.sim.cost.profiled import ProfiledCostModel
from corral.sim.deployment import DeploymentOptions
from corral.sim.profile import ProfileGrid, profile_engine
from corral.workloads import ArrivalOptions, WorkloadOptions, build_workload


def main(argv: list[str]) -> int:
    """`corral simulate ...` through the command's own module (as corral.cli wires it)."""
    assert argv[0] == "simulate"
    parser = argparse.ArgumentParser(prog="corral simulate")
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(argv[1:]))


def test_run_prints_the_report_and_writes_json(tmp_path, capsys):
    out = tmp_path / "report.json"
    code = main(
        [
            "simulate",
            "run",
            "--dataset",
            "random",
            "--num-requests",
            "40",
            "--input-len",
            "200",
            "--output-len",
            "20",
            "--request-rate",
            "20",
            "--num-instances",
            "2",
            "--model",
            "smollm-135m",
            "--hardware",
            "a100",
            "--slo",
            "ttft_ms=500",
            "--result-json",
            str(out),
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "Requests completed / failed:            40 / 0" in text
    assert "Goodput" in text and "requests per wall-second" in text
    document = json.loads(out.read_text())
    assert document["summary"]["num_completed"] == 40 and len(document["records"]) == 40
    assert document["cost_model"]["hardware"] == "A100-SXM4-80GB"
    assert document["cost_usd"] > 0 and document["energy_kwh"] > 0


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--hardware", "tpu"], "unknown hardware"),
        (["--num-prefill-instances", "2"], "needs both"),
        (["--request-rate", "-3"], "request rate must be > 0"),
        (["--tp", "2"], "do not split"),
    ],
)
def test_bad_input_is_a_clear_error(flags, message, caplog):
    base = [
        "simulate",
        "run",
        "--dataset",
        "random",
        "--num-requests",
        "4",
        "--model",
        "smollm-135m",
    ]
    assert main(base + flags) == 2
    assert message in caplog.text


@pytest.mark.slow  # runs the real engine (and compiles its CPU kernels if not cached)
def test_profile_a_tiny_engine_and_simulate_with_it(tiny_model, tmp_path):
    config = EngineConfig(
        model=ModelConfig(model=str(tiny_model), dtype="float32", max_model_len=512),
        cache=CacheConfig(num_blocks=128),
        scheduler=SchedulerConfig(max_num_seqs=16, max_num_batched_tokens=256),
    )
    grid = ProfileGrid(
        decode_batch_sizes=(1, 4),
        context_lens=(16, 64),
        prefill_lens=(16, 64, 200),
        prefix_lens=(0, 32),
        mixed_decodes=(2,),
        mixed_prefill_lens=(32,),
        decode_steps=3,
        repeats=1,
    )
    with pytest.raises(ValueError, match="idle_gap_s"):
        profile_engine(config, grid, idle_gap_s=-1.0)
    model = profile_engine(config, grid, idle_gap_s=0.001)
    path = tmp_path / "profile.json"
    model.save(path)
    loaded = ProfiledCostModel.load(path)
    samples = loaded.samples()
    assert len(samples) >= 20 and all(time_s > 0 for _, time_s in samples)
    assert {s.num_decode_requests for s, _ in samples} >= {1, 4}
    assert any(s.num_prefill_tokens and s.num_decode_requests for s, _ in samples)  # mixed
    assert loaded.metadata["engine"]["num_blocks"] == 128
    assert loaded.metadata["idle_gap_s"] == 0.001
    assert loaded.metadata["fit"]["num_samples"] == len(samples)
    work = build_workload(
        WorkloadOptions(
            dataset="random",
            num_requests=10,
            input_len=50,
            output_len=5,
            arrival=ArrivalOptions("poisson", rate=5.0),
            vocab_size=100,
        )
    )
    report = simulate(work, DeploymentOptions(cost_model="profiled", profile_path=str(path)))
    assert report.summary.num_completed == 10
    assert report.instances[0].num_steps > 0 and report.cost_usd is None


def test_search_and_plots_write_pngs(tmp_path, capsys):
    plot = tmp_path / "search.png"
    code = main(
        [
            "simulate",
            "search",
            "--dataset",
            "random",
            "--num-requests",
            "30",
            "--input-len",
            "500",
            "--output-len",
            "20",
            "--request-rate",
            "30",
            "--model",
            "llama-3.1-8b",
            "--max-model-len",
            "2048",
            "--slo",
            "ttft_ms=200",
            "--hardware-menu",
            "a100,h100",
            "--tp-menu",
            "1",
            "--instances-menu",
            "1,2,4",
            "--plot",
            str(plot),
        ]
    )
    assert code == 0
    assert "cheapest meeting the SLOs" in capsys.readouterr().out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plots = tmp_path / "run"
    assert (
        main(
            [
                "simulate",
                "run",
                "--dataset",
                "random",
                "--num-requests",
                "10",
                "--model",
                "smollm-135m",
                "--plot",
                str(plots),
            ]
        )
        == 0
    )
    assert sorted(p.name for p in plots.iterdir()) == ["kv_usage.png", "latency_cdf.png"]
