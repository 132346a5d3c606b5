"""Where the shared data sets live: CORRAL_DATA_DIR, else <repo>/../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import corral


def default_data_dir() -> Path:
    env = os.environ.get("CORRAL_DATA_DIR")
    if env:
        return Path(env)
    return Path(corral.__file__).resolve().parents[2] / "shared" / "data"


def data_file(data_dir: str | None, *parts: str) -> Path:
    """A file under the data directory; FileNotFoundError names the path and the override."""
    path = Path(data_dir) if data_dir else default_data_dir()
    path = path.joinpath(*parts)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist; set CORRAL_DATA_DIR (or --data-dir) to the folder holding "
            f"{'/'.join(parts[:-1]) or parts[-1]}"
        )
    return path
