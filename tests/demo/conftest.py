"""Fixtures of the demo-model tests: the shipped model directories and GSM8K (skipped when
absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.demo import BUNDLED_MODELS_DIR

TARGET_DIR = BUNDLED_MODELS_DIR / "corral-demo"
DRAFT_DIR = BUNDLED_MODELS_DIR / "corral-demo-draft"


def _shipped(path: Path) -> Path:
    if not (path / "config.json").is_file():
        pytest.skip(f"no trained demo model at {path} (make demo-models)")
    return path


@pytest.fixture(scope="session")
def target_dir() -> Path:
    return _shipped(TARGET_DIR)


@pytest.fixture(scope="session")
def draft_dir() -> Path:
    return _shipped(DRAFT_DIR)


@pytest.fixture(scope="session", params=["corral-demo", "corral-demo-draft"])
def shipped_dir(request: pytest.FixtureRequest) -> Path:
    return _shipped(BUNDLED_MODELS_DIR / request.param)


@pytest.fixture(scope="session")
def gsm8k_train():
    from corral.demo.corpus import load_gsm8k

    try:
        return load_gsm8k("train")
    except FileNotFoundError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="session")
def gsm8k_test():
    from corral.demo.corpus import load_gsm8k

    try:
        return load_gsm8k("test")
    except FileNotFoundError as error:
        pytest.skip(str(error))
