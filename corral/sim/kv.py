"""SimKVCacheManager: the real KVCacheManager, counting the KV that arrived from another
instance.

With prefill/decode disaggregation, a decode instance's KV connector (corral/kv_transfer/
scheduler_half.py, driven by corral/sim/kv_transfer_sim.py) registers fetched blocks in the
prefix cache (register_held); the scheduler then admits the request with them as prefix hits.
num_external_tokens counts those tokens, so that reports can tell this instance's own prefix
hits from transferred KV.
"""

from __future__ import annotations

from corral.core.kv_cache import KVCacheManager
from corral.request import Request


class SimKVCacheManager(KVCacheManager):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Tokens whose KV was fetched from another instance (full blocks, registered).
        self.num_external_tokens = 0

    def register_held(self, holder_id: str, request: Request, first_block: int = 0) -> None:
        """KVCacheManager.register_held, counting the held blocks' tokens as external."""
        super().register_held(holder_id, request, first_block)
        self.num_external_tokens += len(self._holds[holder_id]) * self.block_size
