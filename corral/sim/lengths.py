"""Output-length predictions in the simulator, made as the engine makes them.

In a simulated workload every request's max_tokens is its true output length, so a length-aware
policy (sjf, srpt) or `--kv-reservation predicted` without a prediction would silently read the
truth. The simulator therefore asks for one of: `--length-predictor PATH`, the trained predictor
the engine loads with the same flag, applied to each prompt's text (InputProcessor's rule); or
`--length-oracle`, the true length, said out loud.
"""

from __future__ import annotations

from corral.config import SchedulerConfig
from corral.request import Request
from corral.sim.cluster import RequestHook
from corral.workloads.spec import RequestSpec, Workload

LENGTH_AWARE_POLICIES = ("sjf", "srpt")


def needs_lengths(scheduler: SchedulerConfig) -> bool:
    """Whether the policy or the KV reservation reads predicted output lengths."""
    policy = scheduler.policy.split(":", 1)[0]
    reservation = scheduler.kv_reservation.split(":", 1)[0]
    return policy in LENGTH_AWARE_POLICIES or reservation == "predicted"


def length_hook(
    workload: Workload,
    scheduler: SchedulerConfig,
    predictor_path: str | None,
    use_oracle: bool,
) -> RequestHook | None:
    """The request hook that sets predicted_num_output_tokens, or None when nothing reads it.
    ValueError when the choice is missing, ambiguous, or the workload has no prompt text."""
    if predictor_path is not None and use_oracle:
        raise ValueError("give --length-predictor PATH or --length-oracle, not both")
    if predictor_path is None and not use_oracle:
        if needs_lengths(scheduler):
            raise ValueError(
                f"--scheduling-policy {scheduler.policy} / --kv-reservation "
                f"{scheduler.kv_reservation} read predicted output lengths, and in the simulator "
                "max_tokens is each request's true length: give --length-predictor PATH (a "
                "trained predictor, as the engine loads it) or --length-oracle (the true length)"
            )
        return None
    if use_oracle:
        return _oracle
    from corral.predict import load_predictor

    missing = [spec.request_id for spec in workload if spec.prompt is None]
    if missing:
        raise ValueError(
            f"--length-predictor predicts from prompt text, and the {workload.name} workload "
            f"has none (e.g. {missing[0]!r}); use a text dataset or --length-oracle"
        )
    predictor = load_predictor(predictor_path)
    predictions: dict[str, int] = {}

    def predict(request: Request, spec: RequestSpec) -> None:
        # Once per request: a disaggregated request is seen again on its decode side.
        if spec.request_id not in predictions:
            predictions[spec.request_id] = predictor.predict_one(spec.prompt or "")
        request.predicted_num_output_tokens = predictions[spec.request_id]

    return predict


def _oracle(request: Request, spec: RequestSpec) -> None:
    request.predicted_num_output_tokens = spec.num_output_tokens
