"""Rank 0's side of tensor parallelism: the worker processes, fed every step down a pipe.

Rank 0 is the ModelExecutor in the engine-core process; ranks 1..N-1 are
`python -m corral.model.tp_worker` subprocesses it starts (sharding: tensor_parallel.py). Rank 0
sends each step's model inputs (the tensors build_step_inputs made, pickled) and each step's KV
tier copies (the host tier's saves and loads, which swap preemption uses too) down every worker's
stdin pipe; then all ranks run the forward in lockstep, the all-reduces pairing up through
torch.distributed (gloo on CPU, NCCL on CUDA: the backend follows the device). Pipes rather than
a broadcast carry the inputs because a worker may wait for the next step as long as the engine is
idle (a collective would time out), and because a pipe reads EOF when rank 0 dies: the worker
then exits. A worker that dies makes rank 0 raise: its exit status is checked before every step,
and a collective with a dead peer fails, or times out after CORRAL_TP_TIMEOUT_S seconds (120).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from corral.model.arch import ModelArch
from corral.model.expert_parallel import attach_all_reduce
from corral.model.kernels import cpu_kernels
from corral.model.models.llama import LlamaFamilyModel
from corral.model.tensor_parallel import (
    TIMEOUT_S,
    backend_for,
    check_shardable,
    encode,
    load_shard,
    local_arch,
    rank_device,
    read_message,
    threads_per_rank,
    to_device,
)

logger = logging.getLogger(__name__)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TensorParallelGroup:
    """Rank 0's handle on the workers: starts them, feeds them each step, stops them."""

    def __init__(
        self,
        model_dir: str | Path,
        arch: ModelArch,
        dtype: torch.dtype,
        device: torch.device,
        max_len: int,
        size: int,
        num_threads: int,
        quantization: str | None = None,
        expert_parallel: bool = False,
    ) -> None:
        check_shardable(arch, size, expert_parallel)
        if device.type == "cuda" and (device.index or 0) != 0:
            raise ValueError("tensor parallelism on CUDA runs rank r on cuda:r: use --device cuda")
        if device.type == "cuda" and torch.cuda.device_count() < size:
            raise ValueError(f"--tensor-parallel-size {size} needs {size} GPUs")
        if dist.is_initialized():
            raise RuntimeError(
                "this process already runs a torch.distributed group (another tensor-parallel "
                "engine?): one tensor-parallel engine per process"
            )
        self.model_dir, self.arch, self.dtype, self.max_len = model_dir, arch, dtype, max_len
        self.device = rank_device(device, 0)
        self.size = size
        self.quantization = quantization
        self.expert_parallel = expert_parallel
        self.num_kv_heads = local_arch(arch, 0, size).num_kv_heads  # rank 0's share
        self.threads = threads_per_rank(num_threads, size)
        self._saved_threads = torch.get_num_threads()
        self.failure: str | None = None
        self.workers: list[subprocess.Popen] = []
        atexit.register(self.shutdown)
        try:
            self._start_workers()
        except BaseException:
            self.shutdown()
            raise

    def _start_workers(self) -> None:
        port = _free_port()
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        for rank in range(1, self.size):
            worker = subprocess.Popen(
                [sys.executable, "-m", "corral.model.tp_worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
            )
            self.workers.append(worker)
            setup = dict(
                model_dir=str(self.model_dir),
                arch=self.arch,
                dtype=self.dtype,
                device=str(rank_device(self.device, rank)),
                max_len=self.max_len,
                rank=rank,
                size=self.size,
                init_method=f"tcp://127.0.0.1:{port}",
                timeout_s=TIMEOUT_S,
                num_threads=self.threads,
                quantization=self.quantization,
                expert_parallel=self.expert_parallel,
            )
            self._send_to(rank, encode(setup))
        for rank in range(1, self.size):
            self._expect(rank, "up")
        torch.set_num_threads(self.threads)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        dist.init_process_group(
            backend_for(self.device),
            init_method=f"tcp://127.0.0.1:{port}",
            rank=0,
            world_size=self.size,
            timeout=timedelta(seconds=TIMEOUT_S),
        )
        logger.info(
            "tensor parallelism: %d ranks (%s)%s, %d torch threads each, workers %s",
            self.size,
            " with expert parallelism" if self.expert_parallel else "",
            backend_for(self.device),
            self.threads,
            [worker.pid for worker in self.workers],
        )

    def load_model(self) -> TensorParallelModel:
        """Rank 0's shard, wrapped so that its forward feeds the workers first."""
        try:
            shard = load_shard(
                self.model_dir,
                self.arch,
                self.dtype,
                self.device,
                self.max_len,
                0,
                self.size,
                self.expert_parallel,
            )
        except BaseException:
            self.shutdown()
            raise
        attach_all_reduce(shard, self.all_reduce)
        if self.device.type == "cpu":
            cpu_kernels()  # built or loaded now, not inside the first step's collectives
        return TensorParallelModel(shard, self, self.arch)

    def attach(self, storage: Any) -> None:
        """Give the workers the KV pool's size (they make theirs alike), wait until they are
        ready, and mirror the storage's tier copies to them from now on."""
        try:
            num_host_slots = 0 if storage.host_values is None else storage.host_values.shape[0]
            self.send(("kv_pool", (storage.spec, storage.values.shape[2], num_host_slots)))
            for rank in range(1, self.size):
                self._expect(rank, "ready")
        except BaseException:
            self.shutdown()
            raise
        storage.mirror = lambda plan: self.send(("kv_plan", plan))

    # ----- each step ----------------------------------------------------------------------

    def send(self, message: Any) -> None:
        """Send message to every worker (after checking that all of them are alive)."""
        self.check_workers()
        data = encode(message)
        for rank in range(1, self.size):
            self._send_to(rank, data)

    def all_reduce(self, tensor: torch.Tensor) -> None:
        """Sum tensor over the ranks, in place."""
        try:
            dist.all_reduce(tensor)
        except Exception as error:  # gloo: a peer closed its connection, or the timeout
            self.check_workers()
            self.failure = f"a tensor-parallel all-reduce failed ({error})"
            raise RuntimeError(self.failure) from error

    def check_workers(self) -> None:
        if self.failure is None:
            for rank, worker in enumerate(self.workers, start=1):
                if worker.poll() is not None:
                    self.failure = (
                        f"tensor-parallel worker rank {rank} (pid {worker.pid}) exited with "
                        f"code {worker.returncode}; the engine cannot run any more"
                    )
                    break
        if self.failure is not None:
            raise RuntimeError(self.failure)

    def _send_to(self, rank: int, data: bytes) -> None:
        worker = self.workers[rank - 1]
        try:
            worker.stdin.write(data)
            worker.stdin.flush()
        except OSError as error:  # BrokenPipeError: it has gone
            worker.wait(timeout=5)
            self.check_workers()
            raise RuntimeError(f"tensor-parallel worker rank {rank}: {error}") from error

    def _expect(self, rank: int, word: str) -> None:
        worker = self.workers[rank - 1]
        message = read_message(worker.stdout)
        if message != word:
            worker.wait(timeout=30)
            raise RuntimeError(
                f"tensor-parallel worker rank {rank} (pid {worker.pid}) failed while starting "
                f"(exit code {worker.poll()}; its error is on stderr above)"
            )

    # ----- the end ------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop the workers (EOF on their pipes; killed if they do not exit within 5 s) and
        leave the torch.distributed group. Safe to call more than once."""
        atexit.unregister(self.shutdown)
        for worker in self.workers:
            if worker.stdin is not None and not worker.stdin.closed:
                with contextlib.suppress(OSError):
                    worker.stdin.close()
        for worker in self.workers:
            try:
                worker.wait(timeout=5)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
            if worker.stdout is not None:
                worker.stdout.close()
        if dist.is_initialized():
            dist.destroy_process_group()
        if self.failure is None and self.workers:
            self.failure = "the tensor-parallel group was shut down"
        torch.set_num_threads(self._saved_threads)


class TensorParallelModel:
    """Rank 0's model: its shard, with a forward that first sends the step's inputs to the
    workers. Everything else (arch: the whole model's; compute_logits: replicated) passes
    through."""

    def __init__(self, shard: LlamaFamilyModel, group: TensorParallelGroup, arch: ModelArch):
        self.shard = shard
        self.group = group
        self.arch = arch

    def __getattr__(self, name: str) -> Any:
        return getattr(self.shard, name)

    def forward(self, input_ids, positions, kv_caches, metadata, lora=None) -> torch.Tensor:
        if lora is not None:
            raise RuntimeError("LoRA adapters do not run with tensor parallelism yet")
        inputs = (input_ids, positions, metadata)
        if self.group.device.type != "cpu":
            inputs = to_device(inputs, torch.device("cpu"))
        self.group.send(("step", inputs))
        try:
            return self.shard.forward(input_ids, positions, kv_caches, metadata)
        except BaseException as error:  # the ranks are out of step now: no further steps
            if self.group.failure is None:
                self.group.failure = f"a tensor-parallel step failed on rank 0 ({error!r})"
            raise

    def shutdown(self) -> None:
        self.group.shutdown()


def start_tensor_parallel(
    model_dir: str | Path,
    arch: ModelArch,
    model_config: Any,
    dtype: torch.dtype,
    device: torch.device,
    max_len: int,
) -> TensorParallelGroup | None:
    """The workers of model_config.tensor_parallel_size > 1 ranks, started (None for one);
    MoE blocks split by whole experts with model_config.enable_expert_parallel."""
    size = model_config.tensor_parallel_size
    if size == 1:
        return None
    return TensorParallelGroup(
        model_dir,
        arch,
        dtype,
        device,
        max_len,
        size,
        model_config.num_threads,
        getattr(model_config, "quantization", None),
        getattr(model_config, "enable_expert_parallel", False),
    )
