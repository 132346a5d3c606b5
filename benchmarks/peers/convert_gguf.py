"""Run llama.cpp's convert_hf_to_gguf.py in the converter's virtual environment (.peers/convert).

corral's reference tokenizer is a byte-level BPE trained on corral's own sources, whose
pre-tokenizer hash llama.cpp does not know; its pre-tokenizer is GPT-2's (ByteLevel with GPT-2's
regex), so an unrecognised hash falls back to "gpt-2". The benchmarks send token ids, so only the
vocabulary size and the special ids matter to the comparison.

    .peers/convert/bin/python benchmarks/peers/convert_gguf.py LLAMA_DIR MODEL_DIR OUT.gguf [TYPE]

TYPE: bf16 (the default) or another --outtype the converter takes (q8_0).
"""

from __future__ import annotations

import logging
import sys


def main() -> None:
    llama_dir, model_dir, outfile = sys.argv[1:4]
    outtype = sys.argv[4] if len(sys.argv) > 4 else "bf16"
    sys.path.insert(0, llama_dir)
    sys.path.insert(0, f"{llama_dir}/gguf-py")
    from conversion import base  # type: ignore[import-not-found]

    original = base.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer) -> str:
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            logging.getLogger("peers").warning("unknown BPE pre-tokenizer: using gpt-2's")
            return "gpt-2"

    base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    import convert_hf_to_gguf  # type: ignore[import-not-found]

    sys.argv = ["convert_hf_to_gguf.py", model_dir, "--outtype", outtype, "--outfile", outfile]
    convert_hf_to_gguf.main()


if __name__ == "__main__":
    main()
