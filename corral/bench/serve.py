"""run_serve_benchmark: a workload against one OpenAI-compatible server, as a library call (the
`bench serve` and `bench sweep` commands and the benchmark scripts use it)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace

from corral.bench.client import ServeClient
from corral.bench.payload import RequestOptions
from corral.bench.report import ServeReport, build_report
from corral.bench.spec_decode import scrape_spec_counts
from corral.bench.transport import HttpTransport
from corral.core.slo_target import SLO
from corral.workloads import Workload

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ServeTarget:
    """Where and how requests go: the server, its key, and client-side limits."""

    base_url: str
    api_key: str | None = None
    max_concurrency: int | None = None
    request_timeout_s: float | None = 600.0
    num_warmup_requests: int = 0
    show_progress: bool = True

    def __post_init__(self) -> None:
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"--max-concurrency must be >= 1, got {self.max_concurrency}")
        if self.request_timeout_s is not None and not self.request_timeout_s > 0:
            raise ValueError(f"--request-timeout-s must be > 0, got {self.request_timeout_s}")
        if self.num_warmup_requests < 0:
            raise ValueError(f"--warmup-requests must be >= 0, got {self.num_warmup_requests}")


async def served_model(transport: HttpTransport) -> str:
    """The first model id the server lists under /v1/models."""
    try:
        listing = await transport.get_json("/v1/models")
        return str(listing["data"][0]["id"])
    except Exception as error:
        raise ValueError(
            f"could not read the model name from {transport.base_url}/v1/models ({error}); "
            f"pass --model"
        ) from None


def fetch_model_name(target: ServeTarget) -> str:
    """served_model() as a blocking call."""

    async def fetch() -> str:
        async with HttpTransport(
            target.base_url, api_key=target.api_key, timeout_s=target.request_timeout_s
        ) as transport:
            return await served_model(transport)

    return asyncio.run(fetch())


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total, desc="bench serve", unit="req", dynamic_ncols=True, disable=not enabled
    )


async def _run(
    workload: Workload, options: RequestOptions, target: ServeTarget, slo: SLO | None
) -> tuple[ServeReport, RequestOptions]:
    async with HttpTransport(
        target.base_url,
        api_key=target.api_key,
        timeout_s=target.request_timeout_s,
        max_connections=target.max_concurrency,
    ) as transport:
        if not options.model:
            options = replace(options, model=await served_model(transport))
        progress = _progress_bar(len(workload), target.show_progress)
        failures = 0

        def on_record(record) -> None:
            nonlocal failures
            failures += not record.record.is_ok
            progress.update(1)
            if failures:
                progress.set_postfix(failed=failures, refresh=False)

        client = ServeClient(
            workload,
            options,
            transport,
            max_concurrency=target.max_concurrency,
            on_record=on_record,
        )
        if target.num_warmup_requests:
            for error in await client.warmup(target.num_warmup_requests):
                logger.warning("warm-up request failed: %s", error)
        # The server's speculative decoding counters around the measured run (not the warm-up).
        spec_before = await scrape_spec_counts(transport)
        try:
            run = await client.run()
        finally:
            progress.close()
        spec_after = await scrape_spec_counts(transport) if spec_before is not None else None
    spec = spec_after - spec_before if spec_before is not None and spec_after is not None else None
    # Samples stopped by agreement end short of the forced length by design.
    forced = options.force_output_len and options.stop_when_agreed is None
    report = build_report(run, slo, force_output_len=forced, spec_decode=spec)
    return report, options


def run_serve_benchmark(
    workload: Workload, options: RequestOptions, target: ServeTarget, slo: SLO | None = None
) -> tuple[ServeReport, RequestOptions]:
    """Send workload to target and report; returns the options used (with the model name
    filled in from /v1/models when options.model was empty)."""
    return asyncio.run(_run(workload, options, target, slo))
