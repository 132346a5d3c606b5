"""--preemption-mode swap without a host KV tier is refused at config time, naming the flag that
sizes one, instead of silently recomputing (issue 13, defect 4)."""

from __future__ import annotations

import pytest

from corral import LLM
from corral.cli import build_parser, main
from corral.config import CacheConfig, EngineConfig, SchedulerConfig
from corral.engine.engine_args import engine_config_from_args


def test_engine_config_refuses_swap_without_a_host_tier():
    with pytest.raises(ValueError, match="--host-cache-memory"):
        EngineConfig(scheduler=SchedulerConfig(preemption_mode="swap"))
    config = EngineConfig(
        cache=CacheConfig(host_cache_memory="64MiB"),
        scheduler=SchedulerConfig(preemption_mode="swap"),
    )
    assert config.scheduler.preemption_mode == "swap"


def test_llm_keywords_refuse_swap_without_a_host_tier():
    with pytest.raises(ValueError, match="host_cache_memory"):
        LLM(preemption_mode="swap")


@pytest.mark.parametrize("command", [["serve"], ["generate", "hello"]])
def test_cli_refuses_swap_without_a_host_tier(command, capsys):
    argv = [*command, "--preemption-mode", "swap"]
    args = build_parser(command[0]).parse_args(argv)
    with pytest.raises(ValueError, match="--host-cache-memory"):
        engine_config_from_args(args)
    assert main(argv) == 2  # refused before a model loads or a server starts
    assert "--host-cache-memory" in capsys.readouterr().err
    args = build_parser(command[0]).parse_args([*argv, "--host-cache-memory", "64MiB"])
    assert engine_config_from_args(args).cache.host_cache_memory == "64MiB"


def test_help_says_swap_needs_a_host_tier(capsys):
    with pytest.raises(SystemExit):
        build_parser("serve").parse_args(["serve", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "refused without --host-cache-memory" in help_text


def test_host_tier_smaller_than_one_block_is_refused(tiny_model):
    with pytest.raises(ValueError, match="less than one KV block"):
        LLM(
            model=str(tiny_model),
            dtype="float32",
            num_blocks=8,
            preemption_mode="swap",
            host_cache_memory="1KiB",
        )
