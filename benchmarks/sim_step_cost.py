"""CPU cost of one simulated engine step: Scheduler.schedule + SimExecutor.execute +
Scheduler.update for one instance with N requests decoding (the simulator's inner loop).

    .venv/bin/python -m benchmarks.sim_step_cost --num-requests 4 --num-steps 50000

To compare two versions of corral/core, run it alternately with PYTHONPATH pointing at a copy of
the tree holding the other version (same session, several alternations).
"""

from __future__ import annotations

import argparse
import time

from corral.config import SchedulerConfig
from corral.core.scheduler import Scheduler
from corral.request import Request
from corral.sampling_params import SamplingParams
from corral.sim.cost.hardware import load_hardware
from corral.sim.cost.roofline import RooflineCostModel
from corral.sim.executor import SimExecutor
from corral.sim.kv import SimKVCacheManager
from corral.sim.model_shapes import load_model_shape


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-requests", type=int, default=4)
    parser.add_argument("--num-steps", type=int, default=50_000)
    parser.add_argument("--prompt-len", type=int, default=1000)
    args = parser.parse_args()
    cost = RooflineCostModel(
        load_model_shape("llama-3.1-70b"), load_hardware("h100"), tensor_parallel_size=4
    )
    max_len = args.prompt_len + args.num_steps + 10
    kv = SimKVCacheManager(max_len * args.num_requests // 16 + 64, 16, prefix_hash="builtin")
    scheduler = Scheduler(
        SchedulerConfig(max_num_seqs=256, max_num_batched_tokens=8192),
        kv,
        max_len,
        clock=lambda: 0.0,
    )
    executor = SimExecutor(cost)
    params = SamplingParams(
        temperature=0.0, max_tokens=args.num_steps + 5, ignore_eos=True, detokenize=False
    )
    for index in range(args.num_requests):
        prompt = list(range(1 + index, args.prompt_len + 1 + index))
        scheduler.add_request(Request(f"r{index}", prompt, params, max_model_len=max_len))
    output = scheduler.schedule()
    scheduler.update(output, executor.execute(output))  # the prefill step, not timed
    start = time.process_time()
    for _ in range(args.num_steps):
        output = scheduler.schedule()
        scheduler.update(output, executor.execute(output))
    cpu_s = time.process_time() - start
    print(
        f"{args.num_requests} decoding requests: {1e6 * cpu_s / args.num_steps:.1f} us CPU per "
        f"step ({args.num_steps} steps)"
    )


if __name__ == "__main__":
    main()
