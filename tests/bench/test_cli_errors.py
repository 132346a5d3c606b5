"""Bad input to `corral bench` is a clear error (exit 2, the value and the rule named)."""

from __future__ import annotations

import pytest

from corral.cli import main

SERVE = ["bench", "serve", "--no-progress", "--dataset", "random", "--num-requests", "2"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--base-url", "localhost:8000"], "--base-url must look like http://host:port"),
        (["--base-url", "http://127.0.0.1:9", "--slo", "ttft=3"], "SLO item 'ttft=3'"),
        (
            ["--base-url", "http://127.0.0.1:9", "--model", "m", "--max-concurrency", "0"],
            "--max-concurrency must be >= 1, got 0",
        ),
        (
            ["--base-url", "http://127.0.0.1:9", "--model", "m", "--endpoint", "chat"],
            "the random workload has no prompt text",
        ),
        (
            ["--base-url", "http://127.0.0.1:9", "--model", "m", "--request-timeout-s", "0"],
            "--request-timeout-s must be > 0",
        ),
        (
            ["--base-url", "http://127.0.0.1:9", "--model", "m", "--send-deadlines"],
            "--send-deadlines needs --slo with ttft_ms and tpot_ms",
        ),
        (
            ["--base-url", "http://127.0.0.1:9", "--model", "m", "--send-deadlines"]
            + ["--slo", "e2e_ms=900"],
            "lacks one",
        ),
    ],
)
def test_serve_rejects_bad_input(extra, message, caplog):
    assert main(SERVE + extra) == 2
    assert message in caplog.text


def test_sweep_needs_rates_or_concurrencies(caplog):
    args = ["bench", "sweep", "--base-url", "http://127.0.0.1:9", "--model", "m"]
    assert main([*args, "--no-progress", "--dataset", "random", "--num-requests", "2"]) == 2
    assert "give exactly one of --request-rates and --concurrencies" in caplog.text


def test_extra_body_must_be_a_json_object(capsys):
    with pytest.raises(SystemExit):
        main([*SERVE, "--base-url", "http://127.0.0.1:9", "--extra-body", "[1]"])
    assert "is not a JSON object" in capsys.readouterr().err
