"""Host and disk KV tiers: spilled blocks come back with identical outputs; the disk tier
survives restarts, is ignored after a config change, and never serves a corrupt block."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from corral import LLM, SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
BLOCK = 16


def prompt_set(vocab_size: int) -> tuple[list[int], list[list[int]]]:
    """A 64-token prompt to bring back later, and distinct fillers that push it out."""
    rng = random.Random(11)
    target = [rng.randrange(3, vocab_size) for _ in range(4 * BLOCK + 1)]
    fillers = [[rng.randrange(3, vocab_size) for _ in range(3 * BLOCK + 1)] for _ in range(6)]
    return target, fillers


def make_llm(model, tmp_path: Path | None, host_blocks: int, **options):
    bytes_per_block = None
    probe = LLM(model=str(model), dtype="float32", num_blocks=1)
    bytes_per_block = probe.engine.executor.storage.spec.bytes_per_block()
    disk = {} if tmp_path is None else {"disk_cache_dir": str(tmp_path)}
    return LLM(
        model=str(model),
        dtype="float32",
        num_blocks=10,
        block_size=BLOCK,
        host_cache_memory=host_blocks * bytes_per_block,
        debug_check_integrity=True,
        **disk,
        **options,
    )


def run(llm, prompts):
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], GREEDY, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outputs]


@pytest.fixture(scope="module")
def expected(tiny_model):
    llm = LLM(model=str(tiny_model), dtype="float32", num_blocks=64, enable_prefix_caching=False)
    target, fillers = prompt_set(llm.engine.vocab_size)
    return target, fillers, run(llm, [target])[0]


def test_host_tier_round_trip(tiny_model, expected):
    target, fillers, reference = expected
    llm = make_llm(tiny_model, None, host_blocks=64)
    assert run(llm, [target]) == [reference]
    for filler in fillers:  # each evicts device blocks, which spill to the host tier
        run(llm, [filler])
    stats = llm.engine.scheduler.stats()
    assert stats.kv_host_saves > 0
    before = stats.prefix_hit_tokens
    assert run(llm, [target]) == [reference]
    stats = llm.engine.scheduler.stats()
    assert stats.kv_host_loads >= 4 and stats.prefix_hit_tokens - before == 4 * BLOCK


def test_disk_tier_round_trip_and_restart(tiny_model, expected, tmp_path):
    target, fillers, reference = expected
    llm = make_llm(tiny_model, tmp_path, host_blocks=4)
    assert run(llm, [target]) == [reference]
    for filler in fillers:
        run(llm, [filler])
    assert llm.engine.scheduler.stats().kv_disk_writes >= 4
    before = llm.engine.scheduler.stats()
    assert run(llm, [target]) == [reference]
    after = llm.engine.scheduler.stats()
    assert after.kv_disk_reads > before.kv_disk_reads
    assert after.prefix_hit_tokens - before.prefix_hit_tokens == 4 * BLOCK
    llm.engine.core.flush()
    files = list(tmp_path.rglob("*.kvblock"))
    assert files

    restarted = make_llm(tiny_model, tmp_path, host_blocks=4)
    assert run(restarted, [target]) == [reference]
    stats = restarted.engine.scheduler.stats()
    assert stats.kv_disk_reads >= 4 and stats.prefix_hit_tokens == 4 * BLOCK

    other_config = make_llm(tiny_model, tmp_path, host_blocks=4, kv_cache_dtype="int8")
    assert other_config.engine.executor.storage.disk.existing_hashes() == []
    run(other_config, [target])
    assert other_config.engine.scheduler.stats().kv_disk_reads == 0


def test_corrupt_or_truncated_disk_blocks_are_recomputed(tiny_model, expected, tmp_path):
    target, fillers, reference = expected
    llm = make_llm(tiny_model, tmp_path, host_blocks=4)
    run(llm, [target])
    for filler in fillers:
        run(llm, [filler])
    llm.engine.core.flush()
    files = sorted(tmp_path.rglob("*.kvblock"))
    assert len(files) >= 2
    for index, path in enumerate(files):
        data = bytearray(path.read_bytes())
        if index % 2:
            path.write_bytes(bytes(data[: len(data) // 2]))  # truncated
        else:
            data[-7] ^= 0xFF  # one flipped byte in the payload
            path.write_bytes(bytes(data))
    restarted = make_llm(tiny_model, tmp_path, host_blocks=4)
    assert run(restarted, [target]) == [reference]
    restarted.engine.core.flush()
    storage = restarted.engine.executor.storage
    assert storage.disk.num_corrupt >= 1
    assert restarted.engine.kv_manager.stats.failed_disk_reads >= 1
    restarted.engine.kv_manager.check_integrity()


def test_swap_preemption_gives_the_same_tokens_as_recompute(tiny_model):
    rng = random.Random(5)
    probe = LLM(model=str(tiny_model), dtype="float32", num_blocks=1)
    vocab = probe.engine.vocab_size
    prompts = [[rng.randrange(3, vocab) for _ in range(n)] for n in (40, 33, 25, 50, 18, 45)]
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)

    def generate(**options):
        llm = LLM(
            model=str(tiny_model),
            dtype="float32",
            block_size=8,
            debug_check_integrity=True,
            **options,
        )
        outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        return [o.outputs[0].token_ids for o in outputs], llm.engine.scheduler.stats()

    relaxed, _ = generate(num_blocks=200)
    recompute, stats = generate(num_blocks=22)
    assert stats.num_preemptions > 0 and recompute == relaxed
    bytes_per_block = probe.engine.executor.storage.spec.bytes_per_block() // 2  # block_size 8
    swapped, stats = generate(
        num_blocks=22, preemption_mode="swap", host_cache_memory=64 * bytes_per_block
    )
    assert stats.kv_swap_outs > 0 and swapped == relaxed


@pytest.mark.parametrize("shared", [True, False])
def test_a_shared_disk_tier_serves_blocks_another_engine_wrote(tiny_model, expected, tmp_path,
                                                               shared):  # fmt: skip
    target, fillers, reference = expected
    reader = make_llm(tiny_model, tmp_path, host_blocks=4, disk_cache_shared=shared)
    writer = make_llm(tiny_model, tmp_path, host_blocks=4, disk_cache_shared=shared)
    assert run(writer, [target]) == [reference]
    for filler in fillers:  # the target's blocks spill to the shared directory
        run(writer, [filler])
    writer.engine.core.flush()
    assert writer.engine.scheduler.stats().kv_disk_writes >= 4
    assert run(reader, [target]) == [reference]  # started before those files existed
    stats = reader.engine.scheduler.stats()
    if shared:
        assert stats.kv_disk_reads >= 4 and stats.prefix_hit_tokens == 4 * BLOCK
        assert reader.engine.kv_manager.offloader.disk.num_adopted >= 4
    else:
        assert stats.kv_disk_reads == 0 and stats.prefix_hit_tokens == 0


def test_a_shared_disk_tier_needs_a_disk_tier():
    from corral.config import CacheConfig

    with pytest.raises(ValueError, match="disk_cache_shared needs a disk tier"):
        CacheConfig(disk_cache_shared=True)
