"""The control plane, plain Python with no torch (a test imports every module and checks):
the scheduler and its step plan, the KV cache manager (block pool, prefix hashing, host/disk
tiers, capacity rules, stats), scheduling policies, KV reservation, SLO accounting, and the
messages between the scheduler and an executor (model, simulated, or a cluster's)."""
