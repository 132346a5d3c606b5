"""The simulator: corral's real scheduler and KV cache manager on a virtual clock.

    from corral.sim.api import simulate
    from corral.sim.deployment import DeploymentOptions
    from corral.workloads import ArrivalOptions, WorkloadOptions, build_workload

    workload = build_workload(WorkloadOptions(dataset="azure-conv", num_requests=2000,
                                              arrival=ArrivalOptions("trace", time_scale=0.1)))
    report = simulate(workload, DeploymentOptions(model="llama-3.1-8b", hardware="h100",
                                                  num_instances=8, router="least-outstanding"))
    report.summary.ttft.p99_ms, report.cost_usd, report.instances[0].utilization

    # multi-LoRA: 32 adapters of rank 16, Zipf-popular, 4 slots per instance
    from corral.config import LoRAConfig
    from corral.sim.lora import LoRASimOptions

    lora = LoRASimOptions(LoRAConfig(enable_lora=True, max_loras=4), num_adapters=32,
                          distribution="zipf:1.0")
    report = simulate(workload, DeploymentOptions(model="llama-3.1-8b", lora=lora))
    report.lora.num_loads, report.lora.load_time_s

Pieces: executor.SimExecutor (the executor contract, a cost model for the time), cost/ (the
`profiled` and `roofline` cost models, hardware specs), instance.SimInstance (a Scheduler +
KVCacheManager on the virtual clock), router (routing policies), cluster.ClusterSimulator (the event
loop, disaggregation), kv_transfer_sim (corral's KV connector between prefill and decode instances,
transfers in virtual time), report, search (capacity planning), profile (measuring the real engine),
lora (multi-LoRA: adapters for the workload, loads and compute priced), cli (`corral simulate`). See
docs/simulator.md.
"""
