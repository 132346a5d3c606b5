"""corral against llama.cpp's llama-server and vLLM's CPU build, on one model, one client and one
machine, rounds alternating between engines (issue 19, item 1). Not part of `make test`.

    bash benchmarks/peers/setup.sh            # peers into .peers/ (git-ignored)
    .venv/bin/python -m benchmarks.peers.model  # the model directory and its GGUF
    .venv/bin/python -m benchmarks.peers.run [--quick]

See docs/peers.md.
"""
