"""A tensor-parallel worker: ranks 1..N-1 of `--tensor-parallel-size N`, one process each.

Started by rank 0 (corral.model.tensor_parallel.TensorParallelGroup) as
`python -m corral.model.tp_worker`, it reads its set-up from stdin, joins the torch.distributed
group, loads its shard of the checkpoint, makes a KV pool of the size rank 0 sends (its KV heads
only), then runs every step rank 0 sends down the pipe: the forward pass in lockstep with rank 0
(the all-reduces pair up) and the KV tiers' copies. The hidden states are dropped: rank 0
computes the logits. It exits at EOF on stdin (rank 0 shut down, or died).

Protocol: length-prefixed pickles (tensor_parallel.encode); to rank 0 on stdout only "up" (about
to join the group) and "ready" (loaded, KV pool made). Its prints and logs go to stderr.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

from corral.model.expert_parallel import attach_all_reduce
from corral.model.kernels import cpu_kernels
from corral.model.kv_storage import KVStorage
from corral.model.layers.linear import tune_linear_dispatch
from corral.model.quantization import apply_quantization
from corral.model.tensor_parallel import backend_for, encode, load_shard, read_message, to_device


def main() -> int:
    reply = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stdout is rank 0's pipe: keep stray prints off it
    sys.stdout = sys.stderr
    requests = sys.stdin.buffer
    setup = read_message(requests)
    if setup is None:
        return 0
    torch.set_num_threads(setup["num_threads"])
    device = torch.device(setup["device"])
    if device.type == "cuda":
        torch.cuda.set_device(device)
    reply.write(encode("up"))
    reply.flush()
    dist.init_process_group(
        backend_for(device),
        init_method=setup["init_method"],
        rank=setup["rank"],
        world_size=setup["size"],
        timeout=timedelta(seconds=setup["timeout_s"]),
    )
    try:
        model = load_shard(
            setup["model_dir"],
            setup["arch"],
            setup["dtype"],
            device,
            setup["max_len"],
            setup["rank"],
            setup["size"],
            setup.get("expert_parallel", False),
        )
        attach_all_reduce(model, dist.all_reduce)
        apply_quantization(model, setup["quantization"])  # as rank 0 does to its shard
        tune_linear_dispatch(model)  # its own shard's shapes
        pool = read_message(requests)
        if pool is None:
            return 0
        spec, num_blocks, num_host_slots = pool[1]
        spec = dataclasses.replace(spec, num_kv_heads=model.arch.num_kv_heads)  # its own heads
        storage = KVStorage(spec, num_blocks, device, num_host_slots)
        if device.type == "cpu":
            cpu_kernels()  # built or loaded now, not inside the first step's collectives
        gc.collect()
        gc.freeze()
        reply.write(encode("ready"))
        reply.flush()
        with torch.inference_mode():
            while (message := read_message(requests)) is not None:
                kind, payload = message
                if kind == "step":
                    input_ids, positions, metadata = to_device(payload, device)
                    model.forward(input_ids, positions, storage.layer_caches, metadata)
                elif kind == "kv_plan":
                    storage.apply(payload)
                else:
                    raise ValueError(f"unknown message {kind!r} from rank 0")
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
