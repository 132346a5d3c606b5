"""`corral bench throughput` and `corral bench latency` on a tiny model, both backends."""

from __future__ import annotations

import json

import pytest

from corral.bench.offline.backends import BackendOptions, make_backend
from corral.bench.offline.measure import latency_batch, measure_latency
from corral.cli import main
from corral.llm import engine_config_from_kwargs


@pytest.fixture(autouse=True)
def one_thread():
    """The backends run with --num-threads 1 (fast on a busy machine); restore torch's count."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_throughput_command_runs_both_backends_on_the_same_requests(tiny_model, tmp_path, capsys):
    out = tmp_path / "throughput.json"
    args = ["bench", "throughput", "--model", str(tiny_model), "--dtype", "float32"]
    args += ["--num-threads", "1"]
    args += ["--backend", "corral,transformers", "--hf-batch-size", "4", "--num-kv-blocks", "64"]
    args += ["--dataset", "random", "--num-requests", "6", "--input-len", "12"]
    args += ["--output-len", "5", "--range-ratio", "0.5", "--result-json", str(out)]
    assert main(args) == 0
    document = json.loads(out.read_text())
    corral, hf = document["results"]
    assert (corral["backend"], hf["backend"]) == ("corral", "transformers")
    assert corral["num_requests"] == hf["num_requests"] == 6
    # Same prompts, same forced output lengths, for both backends.
    assert corral["num_prompt_tokens"] == hf["num_prompt_tokens"]
    assert corral["num_output_tokens"] == hf["num_output_tokens"]
    assert corral["dtype"] == hf["dtype"] == "float32"
    text = capsys.readouterr().out
    assert "corral / transformers:" in text and "6 requests" in text


def test_latency_repeats_one_batch(tiny_model):
    config = engine_config_from_kwargs(
        model=str(tiny_model), dtype="float32", num_blocks=64, num_threads=1
    )
    backend = make_backend("corral", BackendOptions(config))
    prompts = latency_batch(3, 10, backend.vocab_size)
    assert len({tuple(p) for p in prompts}) == 3 and all(len(p) == 10 for p in prompts)
    result = measure_latency(backend, "corral", prompts, 4, num_iters=3, num_warmup_iters=1)
    assert len(result.iteration_s) == 3
    stats = result.percentiles_ms()
    assert stats["median"] <= stats["p90"] <= stats["p99"] <= stats["max"]
    assert "batch 3 x (10 in, 4 out), 3 iterations" in result.describe()
    with pytest.raises(ValueError, match="iterations >= 1"):
        measure_latency(backend, "corral", prompts, 4, num_iters=0)


def test_latency_command_writes_its_json(tiny_model, tmp_path):
    out = tmp_path / "latency.json"
    args = ["bench", "latency", "--model", str(tiny_model), "--dtype", "float32"]
    args += ["--num-threads", "1"]
    args += ["--batch-size", "2", "--input-len", "8", "--output-len", "3", "--num-iters", "2"]
    args += ["--backend", "transformers", "--result-json", str(out)]
    assert main(args) == 0
    (result,) = json.loads(out.read_text())["results"]
    assert result["backend"] == "transformers" and len(result["iteration_s"]) == 2


def test_unknown_backend_is_a_clear_error(tiny_model, caplog):
    args = ["bench", "throughput", "--model", str(tiny_model), "--backend", "vllm"]
    assert main(args) == 2
    assert "unknown offline backend 'vllm'; known: corral, transformers" in caplog.text
