"""The control plane: scheduler, KV cache manager and policies. Plain Python, no torch."""
