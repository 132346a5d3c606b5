"""Where corral keeps things on disk: its cache (built kernels, fallback models, disk KV
identities) and the shared data sets (traces, GSM8K). Plain paths, no I/O."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$CORRAL_CACHE_DIR, else ~/.cache/corral."""
    return Path(os.environ.get("CORRAL_CACHE_DIR", Path.home() / ".cache" / "corral"))


def default_data_dir() -> Path:
    """$CORRAL_DATA_DIR, else <repo>/../shared/data."""
    env = os.environ.get("CORRAL_DATA_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def data_file(data_dir: str | Path | None, *parts: str) -> Path:
    """A file under the data directory; FileNotFoundError names the path and the override."""
    path = Path(data_dir) if data_dir else default_data_dir()
    path = path.joinpath(*parts)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist; set CORRAL_DATA_DIR (or --data-dir) to the folder holding "
            f"{'/'.join(parts[:-1]) or parts[-1]}"
        )
    return path
