"""The corral engine as an offline backend (continuous batching over LLM.generate)."""

from __future__ import annotations

from collections.abc import Sequence

from corral.bench.offline.backends import OFFLINE_BACKENDS, BackendOptions, OfflineBackend
from corral.bench.spec_decode import SpecDecodeCounts


@OFFLINE_BACKENDS.register("corral")
class CorralBackend(OfflineBackend):
    def __init__(self, options: BackendOptions) -> None:
        from corral import LLM

        super().__init__(options)
        self.llm = LLM.from_config(options.engine)

    @property
    def vocab_size(self) -> int:
        return self.llm.engine.vocab_size

    @property
    def dtype_name(self) -> str:
        from corral.model.device import resolve_device, resolve_dtype

        model = self.options.engine.model
        dtype = resolve_dtype(model.dtype, self.llm.engine.arch.dtype, resolve_device(model.device))
        return str(dtype).removeprefix("torch.")

    def spec_decode_counts(self) -> SpecDecodeCounts | None:
        """The scheduler's speculative decoding counters (--speculative-method); None when off."""
        stats = self.llm.engine.scheduler.stats().spec_decode
        return SpecDecodeCounts.from_stats(stats) if stats is not None else None

    def generate(self, prompts: Sequence[list[int]], output_lens: Sequence[int]) -> int:
        from corral import SamplingParams

        params = [
            SamplingParams(temperature=0, max_tokens=n, ignore_eos=True, detokenize=False)
            for n in output_lens
        ]
        outputs = self.llm.generate(
            [{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False
        )
        num_output = sum(len(output.outputs[0].token_ids) for output in outputs)
        if num_output != sum(output_lens):
            raise RuntimeError(f"corral generated {num_output} tokens, not {sum(output_lens)}")
        return num_output
