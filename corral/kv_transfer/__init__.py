"""KV transfer between engines: prefill/decode disaggregation (docs/disaggregation.md).

Torch-free control plane: params.py (what a request asks), messages.py (scheduler <-> worker),
protocol.py (the lease and fetch state machines), scheduler_half.py (which blocks to lend or
fetch, when they may be freed), wire.py (the bytes on the socket). The worker half
(worker_half.py, torch) moves the blocks' bytes in the engine core process.
"""
