"""The disk KV tier's identity: different weights (anywhere in a file), tokenizer, adapters or KV
layout give different identities; the same inputs give the same one; the cached weight digest is
recomputed when its file changes."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from corral.model.kv_identity import kv_config_hash, weight_file_digest
from corral.model.kv_storage import KVSpec

SPEC = KVSpec(
    num_layers=2,
    block_size=16,
    num_kv_heads=2,
    head_dim=8,
    dtype=torch.float32,
    compute_dtype=torch.float32,
)
MIB = 1 << 20


def _write_checkpoint(directory: Path, last_weight: float) -> Path:
    """A two-shard checkpoint whose second shard holds a 2 MiB tensor; last_weight is its final
    element, so it lies beyond the shard's first MiB."""
    directory.mkdir(parents=True)
    config = {"architectures": ["LlamaForCausalLM"], "hidden_size": 512, "num_hidden_layers": 2}
    (directory / "config.json").write_text(json.dumps(config))
    generator = torch.Generator().manual_seed(0)
    save_file({"a.weight": torch.randn(8, 8, generator=generator)}, directory / "a.safetensors")
    large = torch.randn(1024, 512, generator=generator)  # 2 MiB of float32
    large[-1, -1] = last_weight
    save_file({"b.weight": large}, directory / "b.safetensors")
    (directory / "tokenizer.json").write_text('{"model": {"vocab": {"a": 0, "b": 1}}}')
    (directory / "tokenizer_config.json").write_text('{"eos_token": "b"}')
    (directory / "special_tokens_map.json").write_text('{"eos_token": "b"}')
    return directory


@pytest.fixture
def digest_cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "digests"


def test_weights_differing_beyond_the_first_mib_give_different_identities(
    tmp_path: Path, digest_cache_dir: Path
):
    base = _write_checkpoint(tmp_path / "base", 0.5)
    tuned = _write_checkpoint(tmp_path / "tuned", -0.5)
    base_bytes = (base / "b.safetensors").read_bytes()
    tuned_bytes = (tuned / "b.safetensors").read_bytes()
    # Same sizes and same first MiB: only the content past it tells the two apart.
    assert len(base_bytes) == len(tuned_bytes) > 2 * MIB
    assert base_bytes[:MIB] == tuned_bytes[:MIB] and base_bytes != tuned_bytes
    assert (base / "a.safetensors").read_bytes() == (tuned / "a.safetensors").read_bytes()

    base_identity = kv_config_hash(base, SPEC, digest_cache_dir=digest_cache_dir)
    tuned_identity = kv_config_hash(tuned, SPEC, digest_cache_dir=digest_cache_dir)
    assert base_identity != tuned_identity


@pytest.mark.parametrize(
    "file_name", ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
)
def test_a_tokenizer_change_gives_a_different_identity(
    tmp_path: Path, digest_cache_dir: Path, file_name: str
):
    model_dir = _write_checkpoint(tmp_path / "model", 0.5)
    before = kv_config_hash(model_dir, SPEC, digest_cache_dir=digest_cache_dir)
    path = model_dir / file_name
    path.write_text(path.read_text().replace('"b"', '"c"'))
    assert kv_config_hash(model_dir, SPEC, digest_cache_dir=digest_cache_dir) != before


def test_identity_is_stable_across_calls_and_caches(tmp_path: Path, digest_cache_dir: Path):
    model_dir = _write_checkpoint(tmp_path / "model", 0.5)
    cold = kv_config_hash(model_dir, SPEC, digest_cache_dir=digest_cache_dir)
    warm = kv_config_hash(model_dir, SPEC, digest_cache_dir=digest_cache_dir)
    elsewhere = kv_config_hash(model_dir, SPEC, digest_cache_dir=tmp_path / "other-cache")
    assert cold == warm == elsewhere
    assert len(cold) == 32 and int(cold, 16) >= 0


def test_adapter_set_and_kv_layout_are_part_of_the_identity(tmp_path: Path, digest_cache_dir: Path):
    model_dir = _write_checkpoint(tmp_path / "model", 0.5)

    def identity(spec: KVSpec = SPEC, adapters: tuple[tuple[str, str], ...] = ()) -> str:
        return kv_config_hash(model_dir, spec, adapters, digest_cache_dir=digest_cache_dir)

    plain = identity()
    one = identity(adapters=(("sql", "digest-1"),))
    two = identity(adapters=(("sql", "digest-1"), ("chat", "digest-2")))
    assert len({plain, one, two, identity(adapters=(("sql", "digest-2"),))}) == 4
    assert identity(adapters=(("chat", "digest-2"), ("sql", "digest-1"))) == two
    wider_blocks = KVSpec(2, 32, 2, 8, torch.float32, torch.float32)
    int8_values = KVSpec(2, 16, 2, 8, torch.int8, torch.float32)
    assert len({plain, identity(wider_blocks), identity(int8_values)}) == 3


def test_cached_weight_digest_is_reused_until_the_file_changes(tmp_path: Path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(bytes(range(256)) * 64)
    cache = tmp_path / "digests"
    assert weight_file_digest(weights, cache) == hashlib.sha256(weights.read_bytes()).hexdigest()

    # Plant a marker in the cache entry: returning it proves the file was not read again.
    (entry_path,) = cache.glob("*.json")
    entry = json.loads(entry_path.read_text())
    entry["sha256"] = "0" * 64
    entry_path.write_text(json.dumps(entry))
    assert weight_file_digest(weights, cache) == "0" * 64

    # Same size, new content and a new mtime: recomputed.
    stat = weights.stat()
    weights.write_bytes(bytes(reversed(range(256))) * 64)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert weights.stat().st_size == stat.st_size
    changed = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert weight_file_digest(weights, cache) == changed

    # A new size: recomputed, and the stored entry follows.
    with open(weights, "ab") as handle:
        handle.write(b"tail")
    grown = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert weight_file_digest(weights, cache) == grown
    assert json.loads(entry_path.read_text())["sha256"] == grown


def test_an_unwritable_digest_cache_still_gives_the_identity(tmp_path: Path):
    model_dir = _write_checkpoint(tmp_path / "model", 0.5)
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the cache directory would go")
    expected = kv_config_hash(model_dir, SPEC, digest_cache_dir=tmp_path / "digests")
    assert kv_config_hash(model_dir, SPEC, digest_cache_dir=blocker / "digests") == expected
