"""Per-class SLO attainment on /metrics, with class targets from --slo / --slo-class (issue 13,
defect 7)."""

from __future__ import annotations

import argparse
import re

import pytest
from fastapi.testclient import TestClient

from corral.config import SchedulerConfig
from corral.engine.async_llm import AsyncLLM
from corral.engine.engine_args import scheduler_config_from_args
from corral.llm import engine_config_from_kwargs
from corral.serve.app import build_app
from corral.serve.cli import add_arguments
from corral.serve.config import ServerConfig


def _series(text: str, name: str) -> dict[str, float]:
    """slo_class label -> value of one metric."""
    pattern = rf'^corral:{name}{{[^}}]*slo_class="([^"]+)"[^}}]*}} (\S+)$'
    return {m[0]: float(m[1]) for m in re.findall(pattern, text, flags=re.MULTILINE)}


def test_attainment_per_class_reaches_metrics(tiny_model):
    config = engine_config_from_kwargs(
        model=str(tiny_model),
        dtype="float32",
        num_blocks=64,
        max_model_len=256,
        slo="ttft_ms=600000",  # every class but 1: met by anything that finishes
        slo_classes=("1:ttft_ms=0.001",),  # class 1: missed by any real request
    )
    engine = AsyncLLM(config, multiprocess=False)
    with TestClient(build_app(engine, ServerConfig())) as client:
        body = {"prompt": [5, 6, 7], "max_tokens": 3, "temperature": 0}
        for priority in (0, 0, 1, 2):
            response = client.post("/v1/completions", json={**body, "priority": priority})
            assert response.status_code == 200
        text = client.get("/metrics").text
    assert _series(text, "slo_requests_finished") == {"0": 2.0, "1": 1.0, "2": 1.0}
    assert _series(text, "slo_attainment_ratio") == {"0": 1.0, "1": 0.0, "2": 1.0}
    assert "corral:scheduler_max_queue_wait_seconds" in text


def test_the_flags_build_the_targets_and_bad_ones_are_refused():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [
            "--slo",
            "ttft_ms=500",
            "--slo-class",
            "0:ttft_ms=200,tpot_ms=50",
            "--slo-class",
            "3:e2e_ms=9000",
        ]
    )
    config = scheduler_config_from_args(args)
    assert config.slo == "ttft_ms=500"
    assert config.slo_classes == ("0:ttft_ms=200,tpot_ms=50", "3:e2e_ms=9000")
    for bad, message in [
        (("x:ttft_ms=1",), "PRIORITY an integer"),
        (("0:ttft=1",), "SLO item 'ttft=1'"),
        (("0:ttft_ms=1", "0:ttft_ms=2"), "given twice"),
    ]:
        with pytest.raises(ValueError, match=message):
            SchedulerConfig(slo_classes=bad)
