"""Reasoning workload (n = 8 samples per request, long outputs): shared against unshared prompt
KV blocks, through the real server (`corral bench serve` machinery) and the simulator.

Workload: the `reasoning` preset (corral/workloads/datasets/reasoning.py): GSM8K test questions
asking for step-by-step reasoning, n = 8 samples each, output lengths lognormal around 1536
tokens, capped by the bundled demo model's 512-token context (so every output fills the context
the prompt leaves), forced with ignore_eos; all requests at once. Prompts are tokenized with the
demo model's tokenizer and sent as token ids to /v1/completions (the simulator's prompts exactly).

Server: `corral serve` on the bundled demo model (bfloat16, CPU), block size 16, a KV pool big
enough for every sample at once (no preemption), started fresh per mode (so no prefix cache
carries over): "shared" is the default, "unshared" adds --no-share-sibling-prompts. Measured:
output tokens/s, samples/s, requests/s (the bench client counts every choice), the peak KV
blocks in use (corral:kv_cache_usage_perc polled every 10 ms during the run x the pool), and
prompt KV blocks per request = n x ceil(P / 16) - prefix-hit tokens / 16 (the prompt blocks the
request's samples allocated; hits are whole blocks, from corral:prefix_cache_hits).

Simulator: the same workload and scheduler settings on `corral simulate` (roofline cost model of
the demo model's shape on an H100: its times are not this CPU's; only the ratios matter), peak
KV blocks from the instance's largest KV usage and prompt KV from its prefix-hit tokens, by the
same formula.

    .venv/bin/python benchmarks/reasoning.py            # a few minutes on 2 cores
    .venv/bin/python benchmarks/reasoning.py --quick    # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from benchmarks.common import machine  # noqa: E402
from benchmarks.serve_reference import ServerProcess  # noqa: E402
from corral.bench.payload import RequestOptions  # noqa: E402
from corral.bench.serve import ServeTarget, run_serve_benchmark  # noqa: E402
from corral.config import SchedulerConfig  # noqa: E402
from corral.demo import BUNDLED_MODELS_DIR, DEFAULT_MODEL_NAME  # noqa: E402
from corral.sim.api import simulate_result  # noqa: E402
from corral.sim.deployment import DeploymentOptions  # noqa: E402
from corral.sim.report import build_report  # noqa: E402
from corral.workloads import Workload, WorkloadOptions, build_workload  # noqa: E402

FIGURES = REPO / "docs" / "figures" / "reasoning.json"
MODEL_DIR = BUNDLED_MODELS_DIR / DEFAULT_MODEL_NAME
BLOCK_SIZE = 16
MAX_MODEL_LEN = 512
LOAD_AT_START = round(os.getloadavg()[0], 2)
MODES = {"shared": [], "unshared": ["--no-share-sibling-prompts"]}
# Token ids, so the server's prompts are exactly the simulator's (text would gain a BOS token).
REQUEST_OPTIONS = RequestOptions(model=DEFAULT_MODEL_NAME, prompt_format="ids")


def cpu_flags() -> list[str]:
    """The CPU's avx512 and amx flags (empty off Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")),
        [],
    )
    return sorted(flag for flag in flags if flag.startswith(("avx512", "amx")))


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def metric(text: str, name: str) -> float:
    """The sum of a Prometheus series' values over its labels (0 when absent)."""
    pattern = re.escape(name) + r"(?:\{[^}]*\})? ([0-9.e+-]+)"
    return sum(float(value) for value in re.findall(pattern, text))


class KVPoller:
    """Polls /metrics in a thread; the largest KV usage fraction seen."""

    def __init__(self, url: str, interval_s: float = 0.01) -> None:
        self.url, self.interval_s = url, interval_s
        self.max_usage = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._stop.is_set():
                text = client.get(self.url + "/metrics").text
                usage = metric(text, "corral:kv_cache_usage_perc")
                self.max_usage = max(self.max_usage, usage)
                self._stop.wait(self.interval_s)

    def __enter__(self) -> KVPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def prompt_kv_blocks(work: Workload, prompt_lens: list[int], hit_tokens: float) -> float:
    """Prompt KV blocks the requests' samples allocated, per request."""
    allocated = sum(
        spec.samples_per_request * cdiv(length, BLOCK_SIZE)
        for spec, length in zip(work.specs, prompt_lens)
    )
    return (allocated - hit_tokens / BLOCK_SIZE) / len(work)


def run_server(work: Workload, mode: str, args: argparse.Namespace, log_dir: Path) -> dict:
    server_args = ["--model", str(MODEL_DIR), "--dtype", "bfloat16"]
    server_args += ["--max-model-len", str(MAX_MODEL_LEN), "--block-size", str(BLOCK_SIZE)]
    server_args += ["--num-kv-blocks", str(args.num_blocks), "--num-threads", str(args.threads)]
    server_args += ["--max-num-seqs", str(args.max_num_seqs)]
    server_args += ["--max-num-batched-tokens", str(args.max_num_batched_tokens), *MODES[mode]]
    with ServerProcess(server_args, log_dir / f"server-{mode}.log") as server:
        target = ServeTarget(server.url, show_progress=False)
        # One short request first (not measured): the server's first-request costs.
        first = work.specs[0]
        ids = tuple(reversed(work.token_ids(first)))  # no block in common with the workload
        warm = _with_output_len(
            Workload(work.name, [replace(first, prompt_token_ids=ids)], work.vocab_size), 8
        )
        run_serve_benchmark(warm, REQUEST_OPTIONS, target)
        before = metric(httpx.get(server.url + "/metrics").text, "corral:prefix_cache_hits_total")
        with KVPoller(server.url) as poller:
            report, _ = run_serve_benchmark(work, REQUEST_OPTIONS, target)
        text = httpx.get(server.url + "/metrics").text
    hits = metric(text, "corral:prefix_cache_hits_total") - before
    summary = report.summary
    prompt_lens = [record.record.num_prompt_tokens for record in report.run.records]
    return {
        "completed": summary.num_completed,
        "failed": summary.num_failed,
        "samples": summary.total_samples,
        "output_tokens": summary.total_output_tokens,
        "duration_s": round(summary.duration_s, 2),
        "output_tok_s": round(summary.output_throughput, 1),
        "samples_s": round(summary.sample_throughput, 3),
        "requests_s": round(summary.request_throughput, 3),
        "ttft_mean_ms": round(summary.ttft.mean_ms or 0, 1),
        "tpot_mean_ms": round(summary.tpot.mean_ms or 0, 2),
        "wrong_length": report.num_wrong_length,
        "errors": summary.errors,
        "prefix_hit_tokens": hits,
        "peak_kv_blocks": round(poller.max_usage * args.num_blocks),
        "prompt_kv_blocks_per_request": round(prompt_kv_blocks(work, prompt_lens, hits), 2),
    }


def _with_output_len(work: Workload, num_tokens: int) -> Workload:
    return Workload(
        work.name, [replace(s, num_output_tokens=num_tokens) for s in work], work.vocab_size
    )


def run_simulator(work: Workload, mode: str, args: argparse.Namespace) -> dict:
    scheduler = SchedulerConfig(
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        share_sibling_prompts=mode == "shared",
    )
    deployment = DeploymentOptions(
        model=str(MODEL_DIR),
        scheduler=scheduler,
        block_size=BLOCK_SIZE,
        num_blocks=args.num_blocks,
        max_model_len=MAX_MODEL_LEN,
    )
    result = simulate_result(work, deployment)
    summary = build_report(result).summary
    only = result.instances[0]
    hits = only.kv.stats.prefix_hit_tokens
    return {
        "completed": summary.num_completed,
        "samples": summary.total_samples,
        "output_tokens": summary.total_output_tokens,
        "duration_s": round(summary.duration_s, 3),
        "output_tok_s": round(summary.output_throughput, 1),
        "samples_s": round(summary.sample_throughput, 3),
        "prefix_hit_tokens": hits,
        "peak_kv_blocks": round(only.max_kv_usage * args.num_blocks),
        "prompt_kv_blocks_per_request": round(
            prompt_kv_blocks(work, [s.num_prompt_tokens for s in work], hits), 2
        ),
    }


def ratios(rows: dict[str, dict]) -> dict[str, float]:
    shared, unshared = rows["shared"], rows["unshared"]
    out = {}
    for key in ("output_tok_s", "samples_s", "peak_kv_blocks", "prompt_kv_blocks_per_request"):
        if shared.get(key):
            out[f"{key} unshared/shared"] = round(unshared[key] / shared[key], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-requests", type=int, default=4)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--num-blocks", type=int, default=1200)
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--max-num-batched-tokens", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="2 requests, no JSON written")
    parser.add_argument("--no-server", action="store_true", help="the simulator only")
    parser.add_argument("--out", default=str(FIGURES))
    args = parser.parse_args()
    if args.quick:
        args.num_requests = 2
    options = WorkloadOptions(
        dataset="reasoning",
        num_requests=args.num_requests,
        samples_per_request=args.samples,
        tokenizer=str(MODEL_DIR),
        max_model_len=MAX_MODEL_LEN,
        vocab_size=json.loads((MODEL_DIR / "config.json").read_text())["vocab_size"],
    )
    work = build_workload(options)
    prompts = [spec.num_prompt_tokens for spec in work]
    print(
        f"{len(work)} requests x {args.samples} samples, prompts {prompts}, outputs "
        f"{[spec.num_output_tokens for spec in work]}",
        flush=True,
    )
    document: dict[str, Any] = {
        "benchmark": "reasoning",
        "command": "benchmarks/reasoning.py" + (" --quick" if args.quick else ""),
        "workload": {
            "dataset": "reasoning",
            "num_requests": len(work),
            "samples_per_request": args.samples,
            "prompt_tokens": prompts,
            "output_tokens_per_sample": [spec.num_output_tokens for spec in work],
            "arrival": "all at once",
        },
        "engine": {
            "model": DEFAULT_MODEL_NAME,
            "dtype": "bfloat16",
            "block_size": BLOCK_SIZE,
            "num_kv_blocks": args.num_blocks,
            "max_num_seqs": args.max_num_seqs,
            "max_num_batched_tokens": args.max_num_batched_tokens,
        },
        "server": {},
        "simulator": {},
    }
    for mode in MODES:
        document["simulator"][mode] = run_simulator(work, mode, args)
        print("simulator", mode, json.dumps(document["simulator"][mode]), flush=True)
    document["simulator"]["ratios"] = ratios(document["simulator"])
    if not args.no_server:
        with tempfile.TemporaryDirectory(prefix="corral-reasoning-") as tmp:
            for mode in MODES:
                document["server"][mode] = run_server(work, mode, args, Path(tmp))
                print("server", mode, json.dumps(document["server"][mode]), flush=True)
        document["server"]["ratios"] = ratios(document["server"])
    once = sum(cdiv(length, BLOCK_SIZE) for length in prompts) / len(work)
    document["prompt_kv_blocks_once_per_request"] = round(once, 2)
    document["machine"] = machine(load_average_at_start=LOAD_AT_START, cpu_flags=cpu_flags())
    document["machine"]["load_average_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps({k: document[k] for k in ("server", "simulator")}, indent=1))
    if not args.quick:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(document, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
