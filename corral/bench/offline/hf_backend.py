"""transformers `generate` with static batches: the baseline a user already has.

Prompts are left-padded to the longest in their batch; each batch runs until its longest
requested output (every row generates that many tokens), and only the tokens each request
asked for count. Same model directory, dtype and device as the corral engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from corral.bench.offline.backends import OFFLINE_BACKENDS, BackendOptions, OfflineBackend


@OFFLINE_BACKENDS.register("transformers")
class TransformersBackend(OfflineBackend):
    def __init__(self, options: BackendOptions) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        from corral.model.arch import ModelArch
        from corral.model.device import resolve_device, resolve_dtype
        from corral.model.resolve import resolve_model_dir

        super().__init__(options)
        model = options.engine.model
        model_dir = resolve_model_dir(model.model)
        arch = ModelArch.from_dir(model_dir)
        self.device = resolve_device(model.device)
        self.dtype = resolve_dtype(model.dtype, arch.dtype, self.device)
        if model.num_threads:
            torch.set_num_threads(model.num_threads)
        loaded: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=self.dtype)
        self.model: Any = loaded.to(self.device).eval()
        self._vocab_size = arch.vocab_size

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def generate(self, prompts: Sequence[list[int]], output_lens: Sequence[int]) -> int:
        import torch

        pad = 0
        batch_size = self.options.batch_size
        num_output = 0
        with torch.inference_mode():
            for begin in range(0, len(prompts), batch_size):
                batch = prompts[begin : begin + batch_size]
                lens = output_lens[begin : begin + batch_size]
                width = max(map(len, batch))
                input_ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in batch])
                mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
                self.model.generate(
                    input_ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    max_new_tokens=max(lens),
                    min_new_tokens=max(lens),
                    do_sample=False,
                    pad_token_id=pad,
                    eos_token_id=None,
                )
                num_output += sum(lens)
        return num_output
