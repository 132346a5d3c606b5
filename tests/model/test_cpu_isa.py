"""The instruction-set cap (--cpu-isa, CORRAL_CPU_ISA; corral/model/cpu_features.py): what each
cap removes from the flags the dispatch reads and from the kernels' build, the ceilings it sets
for oneDNN and ATen, refusals; and, in a process of its own, a model served under the
avx512_bf16 cap (a Zen 4's instruction sets) on a CPU with AMX: kernels built without AMX,
weights on the dot-product tiles, the same greedy tokens as the process without the cap."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from corral.config import CPU_ISA_CAPS, ModelConfig
from corral.model import cpu_features
from corral.model.cpu_features import (
    CPU_ISA_ENV,
    ISA_CAPS,
    apply_cpu_isa,
    cpu_flags,
    cpu_isa,
    kernel_compiler_flags,
    native_cpu_flags,
)

REPO = Path(__file__).resolve().parents[2]
SPR_FLAGS = frozenset(
    [
        "fma",
        "avx",
        "avx2",
        "f16c",
        "avx512f",
        "avx512bw",
        "avx512vl",
        "avx512_bf16",
        "avx512_vnni",
        "avx512_fp16",
        "avx_vnni",
        "amx_tile",
        "amx_bf16",
        "amx_int8",
    ]
)


@pytest.fixture
def spr(monkeypatch):
    """A Sapphire-Rapids-like flag set, whatever this CPU is, and an environment of the test's
    own (what apply_cpu_isa writes goes with it)."""
    monkeypatch.setattr(cpu_features, "native_cpu_flags", lambda: SPR_FLAGS)
    environment = {k: v for k, v in os.environ.items() if k != CPU_ISA_ENV}
    monkeypatch.setattr(os, "environ", environment)


def test_the_control_plane_and_the_model_name_the_same_caps():
    assert set(CPU_ISA_CAPS) == set(ISA_CAPS)
    assert ModelConfig(cpu_isa="avx2").cpu_isa == "avx2"
    with pytest.raises(ValueError, match="cpu_isa 'avx9' is not one of native, avx512_bf16"):
        ModelConfig(cpu_isa="avx9")


def test_each_cap_removes_what_the_cpu_it_stands_for_lacks(spr, monkeypatch):
    assert cpu_isa() == "native" and cpu_flags() == SPR_FLAGS
    assert cpu_features.has_native_bf16_matmul() and kernel_compiler_flags() == []
    monkeypatch.setenv(CPU_ISA_ENV, "avx512_bf16")
    assert cpu_flags() == SPR_FLAGS - {
        "amx_tile",
        "amx_bf16",
        "amx_int8",
        "avx512_fp16",
        "avx_vnni",
    }
    assert cpu_features.has_native_bf16_matmul()  # AVX-512 bf16 stays
    assert (
        "-mno-amx-tile" in kernel_compiler_flags() and "-mno-avx512f" not in kernel_compiler_flags()
    )
    monkeypatch.setenv(CPU_ISA_ENV, "AVX2")  # case does not matter
    assert cpu_flags() == frozenset({"fma", "avx", "avx2", "f16c"})
    assert not cpu_features.has_native_bf16_matmul()  # the dispatch sends every row to the kernel
    assert "-mno-avx512f" in kernel_compiler_flags()
    monkeypatch.setenv(CPU_ISA_ENV, "avx9")
    with pytest.raises(ValueError, match="CORRAL_CPU_ISA='avx9' is not a known"):
        cpu_flags()


def test_applying_a_cap_sets_the_libraries_ceilings_and_leaves_a_users_own(spr, monkeypatch):
    monkeypatch.setattr("corral.model.kernels.kernels_loaded", lambda: False)
    os.environ.pop("ONEDNN_MAX_CPU_ISA", None)
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")
    apply_cpu_isa("avx2")
    assert os.environ[CPU_ISA_ENV] == "avx2"
    assert os.environ["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert os.environ["ATEN_CPU_CAPABILITY"] == "default"  # set by the user: kept
    with pytest.raises(ValueError, match="cpu_isa='sse2' is not a known"):
        apply_cpu_isa("sse2")


def test_a_cap_after_the_kernels_are_built_is_refused(spr, monkeypatch):
    monkeypatch.setattr("corral.model.kernels.kernels_loaded", lambda: True)
    apply_cpu_isa("native")  # the cap in force: nothing to change
    with pytest.raises(RuntimeError, match="asked after the CPU kernels were built for 'native'"):
        apply_cpu_isa("avx512_bf16")
    assert os.environ[CPU_ISA_ENV] == "native"


_SERVE_UNDER_A_CAP = """
import json, sys
from corral import LLM, SamplingParams
cap = sys.argv[2] if len(sys.argv) > 2 else None
llm = LLM(model=sys.argv[1], dtype="bfloat16", num_blocks=64, block_size=16, cpu_isa=cap)
from corral.model.kernels import cpu_kernels
from corral.model.cpu_features import cpu_flags
kernels = cpu_kernels()
model = llm.engine.executor.model
prompts = [[5, 17, 99, 3], list(range(40, 110))]
outputs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                       SamplingParams(temperature=0, max_tokens=10, ignore_eos=True),
                       use_tqdm=False)
print(json.dumps({
    "amx": kernels.amx_tiles_supported(), "dot": kernels.dot_tiles_supported(),
    "amx_flags": sorted(f for f in cpu_flags() if f.startswith("amx")),
    "layout": getattr(model.lm_head, "layout", None),
    "tokens": [o.outputs[0].token_ids for o in outputs],
}))
"""


@pytest.mark.slow
@pytest.mark.skipif(
    not {"amx_bf16", "avx512_bf16"} <= native_cpu_flags(),
    reason="the avx512_bf16 cap changes nothing on a CPU without AMX",
)
def test_a_model_served_under_the_zen4_cap_runs_without_amx(tiny_model_factory):
    """Builds the kernels a second time, without AMX (a few minutes the first time; cached)."""
    path = str(tiny_model_factory("llama"))
    env = {k: v for k, v in os.environ.items() if k not in (CPU_ISA_ENV, "ONEDNN_MAX_CPU_ISA")}

    def run(*args: str) -> dict:
        done = subprocess.run(
            [sys.executable, "-c", _SERVE_UNDER_A_CAP, path, *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=1200,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    native, capped = run(), run("avx512_bf16")
    assert native["amx"] and native["layout"] == "tiles"
    assert not capped["amx"] and capped["dot"] and capped["amx_flags"] == []
    assert capped["layout"] == "tiles"  # packed for the dot-product kernel
    assert capped["tokens"] == native["tokens"]
