from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from corral.cli import COMMANDS

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_corral_module(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "corral", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_python_m_corral_help_lists_the_commands():
    result = run_corral_module("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: corral")
    for command in COMMANDS:
        assert command in result.stdout


def test_python_m_corral_exits_with_the_cli_status():
    result = run_corral_module()  # no command: argparse refuses with status 2
    assert result.returncode == 2
    assert "required: COMMAND" in result.stderr
