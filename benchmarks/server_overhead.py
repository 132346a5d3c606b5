"""What `corral serve` costs on top of the engine: the same workload through the server (HTTP,
JSON, tokenization in the API process, IPC to the engine process) and through the offline LLM
API, as an output-tokens/s ratio at concurrency 32; and the time to first token of a 1-token
prompt on an idle server, against the same engine driven in-process.

Workload: the first N requests of the Azure LLM conversation trace (2023), lengths multiplied by
--length-scale (fixed lengths when the trace is absent), random prompt token ids (different in each
run, so that no run hits the prefix cache of an earlier one), temperature 0, EOS ignored, so
both paths produce exactly the same number of tokens; both detokenize. The offline run submits
everything at once with max_num_seqs = concurrency; the server gets a client that keeps
`concurrency` requests in flight, non-streaming and (separately) streaming. The machine is shared
and noisy: each repeat runs offline, then the server, back to back, and the ratios are per
repeat. --num-layers trims the SmolLM shape where the full model is too slow for the machine.

    .venv/bin/python benchmarks/server_overhead.py --repeats 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import azure_conv_lengths, data_dir, smollm_shaped_model  # noqa: E402


def bench_model(num_layers: int) -> Path:
    """The random SmolLM-135M-shaped model, or the same shape with fewer layers (built once)."""
    if num_layers == 30:
        return smollm_shaped_model()
    from corral.demo.bpe import train_byte_level_bpe
    from corral.demo.fallback import fallback_corpus
    from corral.demo.random_model import SMOLLM_135M_SHAPE, build_random_model
    from corral.paths import cache_dir

    target = cache_dir() / f"bench-smollm-135m-random-{num_layers}l"
    if not (target / "config.json").is_file():
        tokenizer = train_byte_level_bpe(fallback_corpus(), vocab_size=2048)
        shape = dict(SMOLLM_135M_SHAPE, num_hidden_layers=num_layers)
        build_random_model(
            target, seed=0, dtype="bfloat16", initializer_range=0.02, tokenizer=tokenizer, **shape
        )
    return target


def workload(args: argparse.Namespace) -> list[tuple[int, int]]:
    trace = data_dir() / "azure-llm-2023" / "AzureLLMInferenceTrace_conv.csv"
    if trace.is_file():
        return azure_conv_lengths(args.num_requests, args.length_scale, args.max_model_len)
    print(f"(no trace at {trace}: fixed lengths 256 prompt / 64 output)")
    return [(256, 64)] * args.num_requests


def prompts_for(lengths: list[tuple[int, int]], vocab_size: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    # Ids from 10 up: clear of the few special tokens at the start of the vocabulary.
    return [[rng.randrange(10, vocab_size) for _ in range(prompt)] for prompt, _ in lengths]


def engine_options(args: argparse.Namespace) -> dict:
    return dict(
        dtype=args.dtype,
        max_num_seqs=args.concurrency,
        max_num_batched_tokens=args.max_num_batched_tokens,
        kv_cache_memory=args.kv_cache_memory,
        max_model_len=args.max_model_len,
        num_threads=args.num_threads,
    )


def run_offline(llm, prompts, lengths) -> dict:
    from corral import SamplingParams

    params = [SamplingParams(temperature=0, max_tokens=out, ignore_eos=True) for _, out in lengths]
    start, start_cpu = time.perf_counter(), time.process_time()
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    num_output = sum(len(o.outputs[0].token_ids) for o in outputs)
    assert num_output == sum(out for _, out in lengths)
    return _result(elapsed, cpu, num_output)


def _result(elapsed_s: float, cpu_s: float, num_output: int) -> dict:
    return {
        "elapsed_s": elapsed_s,
        "cpu_s": cpu_s,
        "output_tokens": num_output,
        "tokens_per_s": num_output / elapsed_s,
        "tokens_per_cpu_s": num_output / cpu_s,
    }


def process_tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its children (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.is_file():
        pids += [int(child) for child in children.read_text().split()]
    for one in pids:
        try:
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def offline_ttft_s(llm, num_samples: int) -> list[float]:
    """Add a 1-token request to the idle engine and step until its first token."""
    from corral import SamplingParams
    from corral.sampling_params import OutputKind

    engine = llm.engine
    params = SamplingParams(temperature=0, max_tokens=1, output_kind=OutputKind.DELTA)
    samples = []
    for index in range(num_samples):
        start = time.perf_counter()
        engine.add_request(f"ttft-{index}", {"prompt_token_ids": [42]}, params)
        while not any(o.outputs and o.outputs[0].token_ids for o in engine.step()):
            pass
        samples.append(time.perf_counter() - start)
        while engine.has_unfinished_requests():
            engine.step()
    return samples


class Server:
    """`corral serve` in a subprocess with the same engine options."""

    def __init__(
        self, model_dir: Path, args: argparse.Namespace, extra_args: tuple[str, ...] = ()
    ) -> None:
        self.port = args.port
        self.url = f"http://127.0.0.1:{self.port}"
        options = engine_options(args)
        command = [sys.executable, "-m", "corral.cli", "--log-level", "WARNING", "serve"]
        command += ["--model", str(model_dir), "--port", str(self.port), "--no-access-log"]
        for name, value in options.items():
            command += ["--" + name.replace("_", "-"), str(value)]
        command += extra_args
        self.process = subprocess.Popen(command, cwd=REPO)

    def wait_ready(self, timeout_s: float = 600) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"corral serve exited with {self.process.returncode}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError("corral serve did not start")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()


async def run_server_load(server: Server, prompts, lengths, concurrency: int, stream: bool) -> dict:
    import aiohttp

    queue = list(zip(prompts, lengths))
    queue.reverse()
    num_output = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal num_output
        while queue:
            prompt, (_, out) = queue.pop()
            body = {
                "prompt": prompt,
                "max_tokens": out,
                "temperature": 0,
                "ignore_eos": True,
                "stream": stream,
            }
            if stream:
                body["stream_options"] = {"include_usage": True}
            async with session.post(server.url + "/v1/completions", json=body) as response:
                assert response.status == 200, await response.text()
                if not stream:
                    num_output += (await response.json())["usage"]["completion_tokens"]
                    continue
                last = b""
                async for line in response.content:
                    if line.startswith(b"data: {"):
                        last = line
                num_output += json.loads(last[6:])["usage"]["completion_tokens"]

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start, start_cpu = time.perf_counter(), process_tree_cpu_s(server.process.pid)
        client_cpu = time.process_time()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        cpu = process_tree_cpu_s(server.process.pid) - start_cpu
    assert num_output == sum(out for _, out in lengths), num_output
    return _result(elapsed, cpu, num_output) | {"client_cpu_s": time.process_time() - client_cpu}


async def server_ttft_s(url: str, num_samples: int) -> list[float]:
    """Time from sending a streaming 1-token-prompt request to its first token's event."""
    import aiohttp

    body = {"prompt": [42], "max_tokens": 1, "temperature": 0, "stream": True}
    samples = []
    async with aiohttp.ClientSession() as session:
        for _ in range(num_samples):
            start = time.perf_counter()
            async with session.post(url + "/v1/completions", json=body) as response:
                async for line in response.content:
                    if line.startswith(b"data: {"):
                        samples.append(time.perf_counter() - start)
                        break
                await response.read()
            await asyncio.sleep(0.05)
    return samples


def add_load_arguments(parser: argparse.ArgumentParser, *, port: int, num_layers: int) -> None:
    """The workload, engine and output flags this benchmark shares with those built on it."""
    parser.add_argument("--num-requests", type=int, default=64)
    parser.add_argument("--length-scale", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--max-num-batched-tokens", type=int, default=1024)
    parser.add_argument("--kv-cache-memory", default="2GiB")
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument(
        "--num-threads",
        type=int,
        default=0,
        help="torch threads of the engines (0: torch's default; 1 is steadier on a shared box)",
    )
    parser.add_argument("--model", type=Path, default=None, help="default: random SmolLM-135M")
    parser.add_argument(
        "--num-layers",
        type=int,
        default=num_layers,
        help="layers of the random SmolLM shape (30: all)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")


def load_inputs(args: argparse.Namespace) -> tuple[Path, int, list[tuple[int, int]]]:
    """The model directory, its vocabulary size and the workload's lengths (add_load_arguments'
    flags)."""
    from corral.model.arch import ModelArch

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    model_dir = args.model or bench_model(args.num_layers)
    return model_dir, ModelArch.from_dir(model_dir).vocab_size, workload(args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_load_arguments(parser, port=18765, num_layers=30)
    parser.add_argument("--ttft-samples", type=int, default=30)
    args = parser.parse_args()
    from corral import LLM

    model_dir, vocab_size, lengths = load_inputs(args)
    print(
        f"model {model_dir.name}; {len(lengths)} requests, prompt mean "
        f"{statistics.mean(p for p, _ in lengths):.0f}, output mean "
        f"{statistics.mean(o for _, o in lengths):.0f} tokens; concurrency {args.concurrency}"
    )
    server = Server(model_dir, args)
    llm = LLM(model=str(model_dir), **engine_options(args))
    server.wait_ready()
    rows = []
    try:
        warm = prompts_for(lengths[:4], vocab_size, seed=1000)
        run_offline(llm, warm, lengths[:4])
        asyncio.run(run_server_load(server, warm, lengths[:4], 4, stream=False))
        for repeat in range(args.repeats):
            prompts = prompts_for(lengths, vocab_size, seed=repeat)
            offline = run_offline(llm, prompts, lengths)
            plain = asyncio.run(
                run_server_load(server, prompts, lengths, args.concurrency, stream=False)
            )
            # Fresh prompts of the same lengths: no hits in the server's prefix cache.
            prompts = prompts_for(lengths, vocab_size, seed=100 + repeat)
            streamed = asyncio.run(
                run_server_load(server, prompts, lengths, args.concurrency, stream=True)
            )
            row = {
                "offline": offline,
                "server": plain,
                "server_stream": streamed,
                "ratio": plain["tokens_per_s"] / offline["tokens_per_s"],
                "ratio_stream": streamed["tokens_per_s"] / offline["tokens_per_s"],
                "cpu_ratio": plain["tokens_per_cpu_s"] / offline["tokens_per_cpu_s"],
                "cpu_ratio_stream": streamed["tokens_per_cpu_s"] / offline["tokens_per_cpu_s"],
            }
            rows.append(row)
            print(
                f"repeat {repeat}: tok/s offline {offline['tokens_per_s']:.1f}, server "
                f"{plain['tokens_per_s']:.1f} (x{row['ratio']:.3f}), streaming "
                f"{streamed['tokens_per_s']:.1f} (x{row['ratio_stream']:.3f}); tokens per CPU-s "
                f"offline {offline['tokens_per_cpu_s']:.1f}, server "
                f"{plain['tokens_per_cpu_s']:.1f} (x{row['cpu_ratio']:.3f}), streaming "
                f"{streamed['tokens_per_cpu_s']:.1f} (x{row['cpu_ratio_stream']:.3f})",
                flush=True,
            )
        ttft_server = asyncio.run(server_ttft_s(server.url, args.ttft_samples))
        ttft_offline = offline_ttft_s(llm, args.ttft_samples)
    finally:
        server.stop()
    summary = {
        "ratio_median": statistics.median(r["ratio"] for r in rows),
        "ratio_stream_median": statistics.median(r["ratio_stream"] for r in rows),
        "cpu_ratio_median": statistics.median(r["cpu_ratio"] for r in rows),
        "cpu_ratio_stream_median": statistics.median(r["cpu_ratio_stream"] for r in rows),
        "ttft_server_median_ms": 1000 * statistics.median(ttft_server),
        "ttft_offline_median_ms": 1000 * statistics.median(ttft_offline),
        "ttft_server_p90_ms": 1000 * sorted(ttft_server)[int(0.9 * len(ttft_server))],
    }
    print(
        f"server/offline output tokens/s at concurrency {args.concurrency}: median "
        f"{summary['ratio_median']:.3f} (non-streaming), {summary['ratio_stream_median']:.3f} "
        f"(streaming); per CPU-second (server: both processes) "
        f"{summary['cpu_ratio_median']:.3f} and {summary['cpu_ratio_stream_median']:.3f}\n"
        f"TTFT of a 1-token prompt, idle: server median "
        f"{summary['ttft_server_median_ms']:.1f} ms (p90 {summary['ttft_server_p90_ms']:.1f}), "
        f"engine in-process {summary['ttft_offline_median_ms']:.1f} ms"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        results = {"args": vars(args), "rows": rows, "summary": summary}
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
