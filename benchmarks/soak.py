"""Soak test of `corral serve`: N mixed requests on loopback with random client disconnects, then
checks that nothing broke and nothing leaked.

The mix (benchmarks/soak_mix.py, seeded): chat and completions, streaming and not, n > 1, several
prompts per completions request, token-id prompts, logprobs (with echo: the prompt's logprobs),
stop strings, ignore_eos / min_tokens, varied max_tokens, prompts sharing a few long prefixes with
different suffixes, ~2% deliberately invalid requests (expected 400), and --disconnect-fraction
of requests whose connection the client closes at a random moment (before the response, or
mid-stream). Checks: no 5xx; every non-aborted response complete (every choice present with a
finish_reason, token counts consistent with usage, logprobs and max_tokens, stop strings
honoured); no unexpected 4xx or transport error; afterwards no request left in the engine, every
KV block free and the KV integrity invariant holding (GET /debug/kv); RSS of the HTTP process and
of the engine process, after --warmup-requests and at the end, grown less than --max-rss-growth;
when the script started the server: no traceback in its log and a clean exit on SIGTERM.

    .venv/bin/python benchmarks/soak.py                       # starts `corral serve` (demo model)
    .venv/bin/python benchmarks/soak.py --num-requests 500 --url http://127.0.0.1:8000 \
        --server-pid 1234                                     # an existing server

Exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.soak_client import OUTCOMES, Result, run_plans  # noqa: E402
from benchmarks.soak_mix import MixBuilder, Plan  # noqa: E402
from benchmarks.soak_server import ServerApi, StartedServer, process_rss  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=24)
    parser.add_argument("--disconnect-fraction", type=float, default=0.1)
    parser.add_argument("--invalid-fraction", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup-requests", type=int, default=300, help="before the first RSS")
    parser.add_argument("--max-rss-growth", type=float, default=0.05, help="per process")
    parser.add_argument("--no-rss-check", action="store_true", help="report RSS, do not check")
    parser.add_argument("--request-timeout-s", type=float, default=300.0)
    parser.add_argument("--max-duration-s", type=float, default=6 * 3600.0)
    parser.add_argument("--url", help="an existing server (needs --debug-check-integrity)")
    parser.add_argument("--server-pid", type=int, help="with --url: its pid, for RSS")
    parser.add_argument("--api-key")
    parser.add_argument("--model", help="when starting a server: --model (default: demo)")
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="one more `corral serve` argument, as --server-arg=--flag (repeat)",
    )
    parser.add_argument("--server-log", type=Path, help="default: a temporary file")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    if args.num_requests < 1 or args.concurrency < 1:
        parser.error("--num-requests and --concurrency must be >= 1")
    if not 0 <= args.disconnect_fraction <= 1 or not 0 <= args.invalid_fraction <= 1:
        parser.error("fractions must be in [0, 1]")
    return args


def _progress(total: int) -> Any:
    counts: Counter[str] = Counter()
    start = time.monotonic()

    def on_result(result: Result) -> None:
        counts[result.outcome] += 1
        done = sum(counts.values())
        if done % 500 == 0 or done == total:
            rate = done / max(time.monotonic() - start, 1e-9)
            print(f"  {done}/{total} ({rate:.1f}/s) {dict(counts)}", file=sys.stderr, flush=True)

    return on_result


def _check(name: str, passed: bool | None, detail: str) -> dict[str, Any]:
    """passed None: skipped."""
    return {"name": name, "passed": passed, "detail": detail}


def _rss_check(
    before: dict[str, int], after: dict[str, int], args: argparse.Namespace
) -> dict[str, Any]:
    if not before or before.keys() != after.keys():
        return _check("rss_growth", None, f"RSS unknown (before {before}, after {after})")
    growth = {name: (after[name] - before[name]) / before[name] for name in before}
    detail = ", ".join(f"{name} {growth[name]:+.2%}" for name in growth)
    if args.no_rss_check:
        return _check("rss_growth", None, detail + " (not checked)")
    return _check("rss_growth", max(growth.values()) < args.max_rss_growth, detail)


async def _send(
    api: ServerApi, plans: list[Plan], args: argparse.Namespace, deadline: float
) -> list[Result]:
    return await run_plans(
        api.base_url,
        plans,
        concurrency=args.concurrency,
        timeout_s=args.request_timeout_s,
        deadline=deadline,
        api_key=args.api_key,
        on_result=_progress(len(plans)),
    )


def run_soak(args: argparse.Namespace) -> dict[str, Any]:
    """Run the soak described by args; the report (its "passed" says whether every check did)."""
    server: StartedServer | None = None
    pid = args.server_pid
    if args.url is None:
        log = args.server_log or Path(tempfile.mkstemp(prefix="soak-server-", suffix=".log")[1])
        server = StartedServer(log, args.model, args.server_arg, args.api_key)
        try:
            server.wait_ready()
        except BaseException:
            server.stop()
            raise
        pid = server.pid
    api = ServerApi(args.url or server.base_url, args.api_key)
    report: dict[str, Any] = {"config": {k: str(v) for k, v in vars(args).items()}}
    try:
        report.update(_soak(api, pid, args))
    finally:
        api.close()
        if server is not None:
            status = server.stop()
            log_text = server.log_path.read_text(errors="replace")
            report["server_log"] = str(server.log_path)
            report.setdefault("checks", []).extend(
                [
                    _check("clean_shutdown", status == 0, f"exit status {status} after SIGTERM"),
                    _check(
                        "server_log_clean",
                        "Traceback" not in log_text,
                        f"{log_text.count('Traceback')} tracebacks in {server.log_path}",
                    ),
                ]
            )
    report["passed"] = all(check["passed"] is not False for check in report["checks"])
    return report


def _soak(api: ServerApi, pid: int | None, args: argparse.Namespace) -> dict[str, Any]:
    info = api.info(args.seed)
    plans = MixBuilder(info, args.seed, args.disconnect_fraction, args.invalid_fraction).plans(
        args.num_requests
    )
    warmup, rest = plans[: args.warmup_requests], plans[args.warmup_requests :]
    deadline = time.monotonic() + args.max_duration_s
    start = time.monotonic()
    results = asyncio.run(_send(api, warmup, args, deadline))
    warm_s = time.monotonic() - start
    clean_after_warmup, warm_detail = api.wait_kv_clean()
    rss_before = process_rss(pid)
    start = time.monotonic()
    results += asyncio.run(_send(api, rest, args, deadline)) if rest else []
    duration_s = warm_s + time.monotonic() - start
    clean, kv_detail = api.wait_kv_clean()
    rss_after = process_rss(pid)
    counts = Counter(result.outcome for result in results)
    failures = [r for r in results if r.outcome not in ("ok", "aborted", "expected_4xx")]
    examples = _examples(failures)
    checks = [
        _check("no_5xx", counts["5xx"] == 0, f"{counts['5xx']} responses with status >= 500"),
        _check(
            "all_complete",
            counts["incomplete"] + counts["unexpected_200"] == 0,
            f"{counts['incomplete']} incomplete or inconsistent, "
            f"{counts['unexpected_200']} invalid requests accepted",
        ),
        _check("no_unexpected_4xx", counts["4xx"] == 0, f"{counts['4xx']} unexpected 4xx"),
        _check(
            "all_sent_and_answered",
            counts["transport_error"] + counts["not_sent"] == 0,
            f"{counts['transport_error']} transport errors, {counts['not_sent']} not sent",
        ),
        _check(
            "kv_clean",
            clean and clean_after_warmup,
            f"after warm-up: {warm_detail}; at the end: {kv_detail}",
        ),
        _rss_check(rss_before, rss_after, args),
    ]
    metrics = api.metrics(("corral:request_success_total", "corral:num_preemptions_total"))
    metrics.update(api.metrics(("corral:prefix_cache_hits_total", "corral:prompt_tokens_total")))
    return {
        "model": info.model,
        "counts": {outcome: counts[outcome] for outcome in OUTCOMES},
        "num_disconnects_planned": sum(plan.disconnect is not None for plan in plans),
        "duration_s": round(duration_s, 1),
        "requests_per_s": round(len(results) / duration_s, 2),
        "completion_tokens": sum(r.completion_tokens for r in results),
        "cached_prompt_tokens_non_streaming": sum(r.cached_tokens for r in results),
        "rss_kib": {"after_warmup": rss_before, "end": rss_after},
        "server_metrics": metrics,
        "machine": machine(),
        "checks": checks,
        "problem_kinds": _problem_kinds(failures),
        "failures": [
            {
                "index": r.index,
                "outcome": r.outcome,
                "status": r.status,
                "problems": r.problems,
                "request": plans[r.index].body,
            }
            for r in examples
        ],
    }


def _problem_kind(problem: str) -> str:
    return re.sub(r"\d+", "N", problem)[:120]


def _problem_kinds(failures: list[Result]) -> dict[str, int]:
    """How often each kind of problem occurred (numbers in the text replaced by N)."""
    kinds = Counter(_problem_kind(p) for r in failures for p in r.problems)
    return dict(kinds.most_common())


def _examples(failures: list[Result], first: int = 20, per_kind: int = 5) -> list[Result]:
    """The first failures, and the first few of every kind of problem."""
    seen: Counter[str] = Counter()
    examples = []
    for position, result in enumerate(failures):
        kinds = {_problem_kind(p) for p in result.problems}
        if position < first or any(seen[kind] < per_kind for kind in kinds):
            examples.append(result)
        seen.update(kinds)
    return examples


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": model}


def print_report(report: dict[str, Any]) -> None:
    config = report["config"]
    print(
        f"soak: {config['num_requests']} requests, concurrency {config['concurrency']}, "
        f"seed {config['seed']}, disconnect fraction {config['disconnect_fraction']}, "
        f"model {report.get('model')}, machine {report.get('machine')}"
    )
    if "counts" in report:
        print("outcomes: " + "  ".join(f"{k} {v}" for k, v in report["counts"].items()))
        print(
            f"{report['duration_s']} s, {report['requests_per_s']} requests/s, "
            f"{report['completion_tokens']} completion tokens, "
            f"{report['num_disconnects_planned']} disconnects planned"
        )
        before, after = report["rss_kib"]["after_warmup"], report["rss_kib"]["end"]
        for name in before:
            print(
                f"RSS {name}: {before[name] / 1024:.1f} MiB -> {after.get(name, 0) / 1024:.1f} MiB"
            )
    for check in report["checks"]:
        verdict = {True: "PASS", False: "FAIL", None: "SKIP"}[check["passed"]]
        print(f"  {verdict} {check['name']}: {check['detail']}")
    for kind, count in list(report.get("problem_kinds", {}).items())[:10]:
        print(f"  {count} x {kind}")
    for failure in report.get("failures", [])[:5]:
        print(
            f"  #{failure['index']} {failure['outcome']} {failure['status']}: "
            f"{failure['problems'][:3]}"
        )
    print("PASSED" if report["passed"] else "FAILED")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run_soak(args)
    print_report(report)
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
