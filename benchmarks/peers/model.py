"""The model of the peer comparison: corral's reference random-weight model shaped like
SmolLM-135M (corral.bench.reference; bf16 safetensors with its 2048-token byte-level BPE
tokenizer) as a Hugging Face directory under .peers/models/, and its bf16 GGUF for llama-server.
Built locally, nothing downloaded.

    .venv/bin/python -m benchmarks.peers.model
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PEERS = REPO / ".peers"
LLAMA_DIR = PEERS / "llama.cpp"
LLAMA_SERVER = LLAMA_DIR / "build" / "bin" / "llama-server"
CONVERT_PYTHON = PEERS / "convert" / "bin" / "python"
VLLM_BIN = PEERS / "vllm" / "bin"
MODEL_NAME = "bench-smollm-135m-random"


def model_dir() -> Path:
    """The Hugging Face directory (built once)."""
    from corral.bench.reference import smollm_shaped_model

    return smollm_shaped_model(cache=PEERS / "models")


def gguf_path(directory: Path | None = None, outtype: str = "bf16") -> Path:
    """The GGUF of the model in outtype (bf16, or q8_0: llama.cpp's 8-bit blocks of 32 weights
    with an fp16 scale each), converted once with llama.cpp's converter."""
    directory = directory or model_dir()
    out = directory.parent / f"{directory.name}-{outtype}.gguf"
    if out.is_file():
        return out
    if not CONVERT_PYTHON.is_file() or not LLAMA_DIR.is_dir():
        raise SystemExit("llama.cpp is not set up: bash benchmarks/peers/setup.sh llama")
    script = Path(__file__).with_name("convert_gguf.py")
    tmp = out.with_suffix(".part")
    command = [str(CONVERT_PYTHON), str(script), str(LLAMA_DIR), str(directory), str(tmp), outtype]
    subprocess.run(command, check=True)
    tmp.rename(out)
    return out
    if not CONVERT_PYTHON.is_file() or not LLAMA_DIR.is_dir():
        raise SystemExit("llama.cpp is not set up: bash benchmarks/peers/setup.sh llama")
    script = Path(__file__).with_name("convert_gguf.py")
    tmp = out.with_suffix(".part")
    command = [str(CONVERT_PYTHON), str(script), str(LLAMA_DIR), str(directory), str(tmp)]
    subprocess.run(command, check=True)
    tmp.rename(out)
    return out


def main() -> None:
    directory = model_dir()
    print(f"model directory: {directory}")
    if "--no-gguf" not in sys.argv:
        print(f"gguf: {gguf_path(directory)}")


if __name__ == "__main__":
    main()
