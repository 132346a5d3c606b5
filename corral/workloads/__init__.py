"""Workloads shared by `corral bench` and `corral simulate`: datasets, arrivals, metrics.

Build a workload and drive anything with it::

    from corral.workloads import ArrivalOptions, WorkloadOptions, build_workload

    workload = build_workload(WorkloadOptions(
        dataset="azure-conv",            # random | azure-conv | azure-code | gsm8k |
                                         # shared-prefix | multi-turn | jsonl | reasoning
        num_requests=200,                # None: the whole trace / file
        length_scale=0.25,               # shrink trace lengths for a small machine
        max_model_len=2048,              # prompts are cut so prompt + output fits
        arrival=ArrivalOptions("trace", time_scale=0.1),   # or ("poisson", rate=2.0),
                                                           # ("gamma", rate=2.0, cv=3.0), ("burst")
        vocab_size=49152,                # bound for synthetic ids (the model's vocabulary)
        tokenizer=None,                  # a tokenizer dir: text datasets get real ids
        seed=0,
    ))
    for spec in workload:                # RequestSpecs sorted by arrival_time_s
        spec.arrival_time_s              # seconds after the start of the run
        spec.prompt                      # text, or None for length-only traces (azure, random)
        workload.token_ids(spec)         # prompt ids (explicit, or deterministic synthetic)
        spec.num_output_tokens           # send max_tokens=this with ignore_eos=True
        spec.samples_per_request         # send n=this (reasoning: 8; samples share the prompt)
        spec.parent_request_id           # multi-turn: issue think_time_s after the parent ends
        spec.client_id, spec.priority    # optional, for fairness and priority policies

An HTTP load generator sends each spec at its arrival time (a later turn: think_time_s after its
parent's last token), either the text (spec.prompt) or the ids (completions accept token ids), and
records one RequestRecord per request (corral.workloads.metrics): arrival time, the time of each
streamed chunk, the number of output tokens, an error if any. `summarize(records, ...)` then gives
TTFT, TPOT = (latency - TTFT) / (output tokens - 1), inter-token latency and end-to-end latency
(mean, median, p90, p99), request/input/output/total token throughput and goodput under SLOs;
`format_summary` prints the table that `corral bench` and `corral simulate` both print.

CLI flags for all of this: `add_workload_arguments(parser)` and `workload_options_from_args`.
Data sets are found under CORRAL_DATA_DIR, else <repo>/../shared/data (override: --data-dir).
"""

from corral.workloads.arrivals import ARRIVAL_PROCESSES, ArrivalOptions, make_arrivals
from corral.workloads.builder import build_workload
from corral.workloads.datasets import DATASETS
from corral.workloads.options import WorkloadOptions
from corral.workloads.spec import RequestSpec, Workload, check_lengths

__all__ = [
    "ARRIVAL_PROCESSES",
    "DATASETS",
    "ArrivalOptions",
    "RequestSpec",
    "Workload",
    "WorkloadOptions",
    "build_workload",
    "check_lengths",
    "make_arrivals",
]
