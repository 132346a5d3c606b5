"""The bf16 linear dispatch measured at start-up: the kernel's row limit follows which matmul is
faster at each row count (stand-in kernels make the answer certain), an override skips the
measurement, and bad overrides are refused with the value named."""

from __future__ import annotations

import time

import pytest
import torch

from corral.model.layers import linear as linear_module
from corral.model.layers.linear_dispatch import (
    UNLIMITED,
    choose_max_kernel_rows,
    choose_tile_form,
    measure_max_kernel_rows,
)

SHAPES = [(64, 32), (32, 64)]


def instant(x, weight):  # no work at all: always faster than F.linear
    return x


def slow_beyond(limit: int):
    def kernel(x, weight):
        if x.shape[0] > limit:
            time.sleep(0.02)  # far slower than F.linear on these tiny shapes
        return x

    return kernel


def test_a_kernel_faster_everywhere_has_no_limit():
    limit, ratios = measure_max_kernel_rows(SHAPES, instant, (1, 2, 4))
    assert limit == UNLIMITED
    assert set(ratios) == {1, 2, 4}


def test_the_limit_is_the_last_row_count_before_the_kernel_loses():
    limit, ratios = measure_max_kernel_rows(SHAPES, slow_beyond(8), (1, 2, 4, 8, 16, 32))
    assert limit == 8
    assert ratios[16] < 1 and 32 not in ratios  # stops timing once the kernel loses


def test_a_kernel_slower_at_one_row_is_never_used():
    limit, _ = measure_max_kernel_rows(SHAPES, slow_beyond(0), (1, 2))
    assert limit == 0


class TinyModel:
    dtype = torch.bfloat16
    device = torch.device("cpu")

    def __init__(self):
        layer = type("Layer", (), {})()
        layer.qkv, layer.o = torch.zeros(96, 32), torch.zeros(32, 32)
        layer.gate_up, layer.down = torch.zeros(128, 32), torch.zeros(32, 64)
        self.layers = [layer]


def test_override_skips_measuring(monkeypatch):
    monkeypatch.setenv("CORRAL_MAX_KERNEL_ROWS", "5")

    def never(x, weight):
        raise AssertionError("measured despite the override")

    assert choose_max_kernel_rows(TinyModel(), never) == 5


@pytest.mark.parametrize("value", ["many", "-1"])
def test_bad_override_is_refused_with_its_value(monkeypatch, value):
    monkeypatch.setenv("CORRAL_MAX_KERNEL_ROWS", value)
    with pytest.raises(ValueError, match=value):
        choose_max_kernel_rows(TinyModel(), instant)


def test_measured_on_the_models_shapes(monkeypatch):
    monkeypatch.setenv("CORRAL_MAX_KERNEL_ROWS", "measure")
    seen = set()

    def kernel(x, weight):
        seen.add(tuple(weight.shape))
        return x

    assert choose_max_kernel_rows(TinyModel(), kernel) == UNLIMITED
    assert seen == {(96, 32), (32, 32), (128, 32), (32, 64)}


def test_no_native_bf16_means_the_kernel_everywhere_unmeasured(monkeypatch):
    from corral.model.layers import linear_dispatch

    monkeypatch.delenv("CORRAL_MAX_KERNEL_ROWS", raising=False)
    monkeypatch.setattr(linear_dispatch, "has_native_bf16_matmul", lambda: False)

    def never(x, weight):
        raise AssertionError("measured on a CPU without native bf16")

    assert choose_max_kernel_rows(TinyModel(), never) == UNLIMITED


def test_native_bf16_is_measured(monkeypatch):
    from corral.model.layers import linear_dispatch

    monkeypatch.delenv("CORRAL_MAX_KERNEL_ROWS", raising=False)
    monkeypatch.setattr(linear_dispatch, "has_native_bf16_matmul", lambda: True)
    assert choose_max_kernel_rows(TinyModel(), slow_beyond(2)) == 2


def test_tuning_leaves_float32_models_alone(monkeypatch):
    model = TinyModel()
    model.dtype = torch.float32
    monkeypatch.setattr(linear_module, "_MAX_KERNEL_ROWS", 7)
    linear_module.tune_linear_dispatch(model)
    assert linear_module._MAX_KERNEL_ROWS == 7


def test_tuned_limit_routes_rows(monkeypatch):
    """Rows within the limit go to the kernel, rows above it to F.linear."""
    calls = []

    class FakeKernels:
        @staticmethod
        def tiles_supported():
            return False

        @staticmethod
        def few_row_linear(x, weight, bias):
            calls.append(x.shape[0])
            return x @ weight.T

    monkeypatch.setattr(linear_module, "cpu_kernels", lambda: FakeKernels)
    monkeypatch.setenv("CORRAL_MAX_KERNEL_ROWS", "2")
    monkeypatch.setattr(linear_module, "_MAX_KERNEL_ROWS", UNLIMITED)
    linear_module.tune_linear_dispatch(TinyModel())
    assert linear_module._MAX_KERNEL_ROWS == 2
    weight = torch.randn(48, 32).to(torch.bfloat16)
    for rows in (1, 2, 3, 8):
        out = linear_module.linear(torch.randn(rows, 32).to(torch.bfloat16), weight)
        assert out.shape == (rows, 48)
    assert calls == [1, 2]


def _spin(seconds: float) -> None:
    """Busy for `seconds` of this thread's CPU time."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


class FormKernels:
    """Dot-product tile kernels whose FMA form computes for 5 ms a call and dot form not at
    all."""

    form = 0

    @classmethod
    def set_dot_tiles_form(cls, form):
        cls.form = form

    @classmethod
    def dot_tiles_linear(cls, x, tiles, bias):
        if cls.form == 1:
            _spin(0.005)


class CrowdedFormKernels(FormKernels):
    """The FMA form computes 1 ms a call, the dot form 3 ms; but each FMA call also waits 10 ms
    descheduled (another process's work), which must not count."""

    @classmethod
    def dot_tiles_linear(cls, x, tiles, bias):
        if cls.form == 1:
            _spin(0.001)
            time.sleep(0.01)
        else:
            _spin(0.003)


def test_the_faster_tile_form_is_kept_and_an_override_wins(monkeypatch):
    monkeypatch.delenv("CORRAL_TILE_FORM", raising=False)
    FormKernels.form = 1
    assert choose_tile_form(TinyModel(), FormKernels) == "dot" and FormKernels.form == 0
    monkeypatch.setenv("CORRAL_TILE_FORM", "fma")
    assert choose_tile_form(TinyModel(), FormKernels) == "fma" and FormKernels.form == 1
    monkeypatch.setenv("CORRAL_TILE_FORM", "avx")
    with pytest.raises(ValueError, match="CORRAL_TILE_FORM='avx' is not one of dot, fma"):
        choose_tile_form(TinyModel(), FormKernels)


def test_the_tile_form_is_timed_by_cpu_time_on_one_thread(monkeypatch):
    monkeypatch.delenv("CORRAL_TILE_FORM", raising=False)
    threads_seen = []
    monkeypatch.setattr(
        CrowdedFormKernels,
        "set_dot_tiles_form",
        classmethod(
            lambda cls, form: (
                threads_seen.append(torch.get_num_threads()),
                setattr(cls, "form", form),
            )
        ),
    )
    num_threads = torch.get_num_threads()
    assert choose_tile_form(TinyModel(), CrowdedFormKernels) == "fma"
    assert set(threads_seen[:-1]) == {1} and torch.get_num_threads() == num_threads
