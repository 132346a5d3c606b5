"""What the disk KV tier's identity costs at start-up (issue 13, defect 3).

Cold: a fresh digest cache, so every weight file is read and hashed (the file itself may already
be in the OS page cache: this measures hashing, not a cold disk). Warm: the cached digests are
reused, so only config.json, the tokenizer files and a stat per weight file are read.

    .venv/bin/python -m benchmarks.kv_identity_cost
    .venv/bin/python -m benchmarks.kv_identity_cost --model /path/to/hf-model-dir
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from corral.demo import BUNDLED_MODELS_DIR, DEFAULT_MODEL_NAME
from corral.model.kv_identity import kv_config_hash
from corral.model.kv_storage import KVSpec
from corral.model.loader import safetensors_files

_SPEC = KVSpec(2, 16, 2, 64, torch.float16, torch.float16)


def _time_s(model_dir: Path, digest_cache_dir: Path) -> tuple[float, str]:
    start = time.perf_counter()
    identity = kv_config_hash(model_dir, _SPEC, digest_cache_dir=digest_cache_dir)
    return time.perf_counter() - start, identity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=BUNDLED_MODELS_DIR / DEFAULT_MODEL_NAME)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    weights_mib = sum(path.stat().st_size for path in safetensors_files(args.model)) / 2**20
    cold_s, warm_s, identities = [], [], set()
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as directory:
            seconds, identity = _time_s(args.model, Path(directory))
            cold_s.append(seconds)
            identities.add(identity)
            for _ in range(args.repeats):
                seconds, identity = _time_s(args.model, Path(directory))
                warm_s.append(seconds)
                identities.add(identity)
    print(f"model {args.model} ({weights_mib:.1f} MiB of weights), identity {identities}")
    cold_median_s = statistics.median(cold_s)
    print(
        f"cold: median {cold_median_s * 1e3:.1f} ms over {len(cold_s)} runs "
        f"({weights_mib / cold_median_s:.0f} MiB/s)"
    )
    print(f"warm: median {statistics.median(warm_s) * 1e3:.2f} ms over {len(warm_s)} runs")


if __name__ == "__main__":
    main()
