"""`profiled`: a step-time regressor fitted to the real engine's measured steps on a machine.

`corral simulate profile` writes the file this loads (JSON): the feature names and fitted
coefficients, the engine settings it was measured with, the model's shape, the raw samples (so
the fit can be redone), and the fit's error on them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from corral.core.batch_shape import BatchShape
from corral.model.arch import ModelArch
from corral.sim.cost.base import COST_MODELS, CostModel, CostModelOptions
from corral.sim.cost.features import feature_fn, feature_rows, is_signed
from corral.sim.cost.fit import fit_signed
from corral.sim.cost.lora import LoRACost
from corral.sim.cost.roofline import active_layer_params, layer_params

PROFILE_KIND = "corral-step-profile"
PROFILE_VERSION = 1
FIT_TARGETS = ("mean", "typical")
MEAN_FIT_ITERATIONS = 5
DEFAULT_FEATURES = (
    "intercept",
    "tokens",
    "tokens_over_16",
    "tokens_over_64",
    "tokens_over_256",
    "prefill_requests",
    "prefill_attention_pairs",
    "decode_context_tokens",
    "decode_padded_context_tokens",
    "sampled_requests",
)


@COST_MODELS.register("profiled")
class ProfiledCostModel(CostModel):
    """step_time_s = sum_j coefficient_j * feature_j(batch), floored at min_step_s."""

    def __init__(
        self,
        features: Sequence[str],
        coefficients: Sequence[float],
        *,
        min_step_s: float = 0.0,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if len(features) != len(coefficients):
            raise ValueError(
                f"{len(features)} features but {len(coefficients)} coefficients in the profile"
            )
        self.features = list(features)
        self.coefficients = [float(c) for c in coefficients]
        self.min_step_s = min_step_s
        self.metadata = metadata or {}
        self._terms = [
            (feature_fn(name), c) for name, c in zip(self.features, self.coefficients) if c
        ]

    @classmethod
    def from_options(cls, options: CostModelOptions) -> CostModel:
        if not options.profile_path:
            raise ValueError("the profiled cost model needs a profile file (--profile PATH)")
        return cls.load(options.profile_path)

    def step_time_s(self, batch: BatchShape) -> float:
        total = 0.0
        for fn, coefficient in self._terms:
            total += coefficient * fn(batch)
        return total if total > self.min_step_s else self.min_step_s

    @property
    def model_arch(self) -> ModelArch | None:
        """The profiled model's shape, when the profile records it."""
        fields = self.metadata.get("arch")
        if not fields:
            return None
        return ModelArch(**{**fields, "eos_token_ids": tuple(fields["eos_token_ids"])})

    def lora_cost(self, segment_overhead_s: float) -> LoRACost:
        """The roofline's analytic LoRA term (corral/sim/cost/lora.py), not fitted: no profile
        holds LoRA steps. Its rates are those the fit implies for the base model: FLOP/s, the
        base model's linear FLOPs per token (2 x active decoder parameters) over the fitted time of
        one more token in a large batch (the tokens coefficient plus every hinge's); bandwidth,
        the base weights' bytes over the fitted intercept, which also holds the step's fixed CPU
        time, so adapter reads are priced slower than they run (none when the intercept is 0)."""
        arch = self.model_arch
        if arch is None:
            raise ValueError("the profile records no model shape; LoRA compute cannot be priced")
        coefficients = dict(zip(self.features, self.coefficients))
        token_s = sum(
            value
            for name, value in coefficients.items()
            if name == "tokens" or name.startswith("tokens_over_")
        )
        if token_s <= 0:
            raise ValueError("the profile has no positive per-token time to price LoRA FLOPs")
        dtype_bytes = int(self.metadata.get("engine", {}).get("dtype_bytes", 2))
        weight_bytes = (layer_params(arch) + arch.hidden_size * arch.vocab_size) * dtype_bytes
        intercept_s = coefficients.get("intercept", 0.0)
        return LoRACost.for_arch(
            arch,
            dtype_bytes=dtype_bytes,
            flops_per_s=2 * active_layer_params(arch) / token_s,
            bytes_per_s=weight_bytes / intercept_s if intercept_s > 0 else math.inf,
            segment_overhead_s=segment_overhead_s,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "profiled",
            "coefficients": dict(zip(self.features, self.coefficients)),
            "engine": self.metadata.get("engine"),
            "fit": self.metadata.get("fit"),
        }

    # ----- fitting and files ---------------------------------------------------------------

    @classmethod
    def fit(
        cls,
        samples: Sequence[tuple[BatchShape, float]],
        features: Sequence[str] = DEFAULT_FEATURES,
        metadata: dict[str, Any] | None = None,
        target: str = "mean",
        outlier_mads: float | None = 4.0,
    ) -> ProfiledCostModel:
        """Fit to (batch, measured seconds) samples.

        target "mean" (the default) predicts a shape's mean step time, the quantity whose sums
        make latencies: least squares relative to the model's own prediction (iteratively
        reweighted, weights 1 / predicted time, so that short and long steps count alike but a
        slow sample's weight is not cut by its own slowness), every sample kept. target
        "typical" minimizes each sample's relative error (weights 1 / measured time) and, with
        outlier_mads, drops samples whose relative residual lies more than that many median
        absolute deviations from the median (steps slowed by another process) and refits; it
        predicts an uncontended step and runs below the mean where steps are noisy.
        The reported errors cover every sample.
        """
        if target not in FIT_TARGETS:
            raise ValueError(f"fit target must be one of {FIT_TARGETS}, got {target!r}")
        if len(samples) < len(features):
            raise ValueError(f"{len(samples)} samples cannot fit {len(features)} features")
        batches = [batch for batch, _ in samples]
        times = np.array([time_s for _, time_s in samples])
        rows = np.asarray(feature_rows(features, batches))
        signed = [is_signed(f) for f in features]
        min_step_s = float(times.min()) * 0.5
        keep = np.ones(len(times), dtype=bool)
        coefficients = fit_signed(rows, times, signed, 1.0 / times)
        if target == "mean":
            for _ in range(MEAN_FIT_ITERATIONS):
                predicted = np.maximum(rows @ coefficients, min_step_s)
                coefficients = fit_signed(rows, times, signed, 1.0 / predicted)
        elif outlier_mads:
            for _ in range(2):
                residuals = rows @ coefficients / times - 1.0
                median = np.median(residuals[keep])
                mad = max(float(np.median(np.abs(residuals[keep] - median))), 1e-3)
                new_keep = np.abs(residuals - median) <= outlier_mads * mad
                if new_keep.sum() < len(features) or np.array_equal(new_keep, keep):
                    break
                keep = new_keep
                coefficients = fit_signed(rows[keep], times[keep], signed, 1.0 / times[keep])
        model = cls(features, coefficients.tolist(), min_step_s=min_step_s)
        predicted = np.array([model.step_time_s(b) for b in batches])
        errors = predicted / times - 1.0
        model.metadata = dict(metadata or {})
        model.metadata["fit"] = {
            "target": target,
            "num_samples": len(samples),
            "num_outliers_dropped": int((~keep).sum()),
            "mean_abs_rel_error": float(np.abs(errors).mean()),
            "median_abs_rel_error": float(np.median(np.abs(errors))),
            "p90_abs_rel_error": float(np.percentile(np.abs(errors), 90)),
            "mean_rel_error": float(errors.mean()),
            # Predicted over measured time, summed over every sample (1: no bias in the sums).
            "total_time_ratio": float(predicted.sum() / times.sum()),
        }
        model.metadata["samples"] = [[list(b), t] for b, t in zip(batches, times.tolist())]
        return model

    def save(self, path: str | Path) -> None:
        document = {
            "kind": PROFILE_KIND,
            "version": PROFILE_VERSION,
            "features": self.features,
            "coefficients": self.coefficients,
            "min_step_s": self.min_step_s,
            **self.metadata,
        }
        Path(path).write_text(json.dumps(document, indent=1))

    @classmethod
    def load(cls, path: str | Path) -> ProfiledCostModel:
        """Read a profile file; ValueError when it is not one."""
        try:
            document = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"profile {path} does not exist") from None
        except json.JSONDecodeError as error:
            raise ValueError(f"profile {path} is not JSON: {error}") from None
        if not isinstance(document, dict) or document.get("kind") != PROFILE_KIND:
            raise ValueError(f"{path} is not a corral step profile (kind {PROFILE_KIND!r})")
        metadata = {
            key: value
            for key, value in document.items()
            if key not in ("kind", "version", "features", "coefficients", "min_step_s")
        }
        return cls(
            document["features"],
            document["coefficients"],
            min_step_s=float(document.get("min_step_s", 0.0)),
            metadata=metadata,
        )

    def samples(self) -> list[tuple[BatchShape, float]]:
        """The measured samples stored with the profile (empty for a hand-written one)."""
        return [(BatchShape(*shape), time_s) for shape, time_s in self.metadata.get("samples", [])]
