# Two commands do all the set-up: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: serve test install lint demo-models clean browser

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	# torch first, pinned, so nothing later can pull a different (CUDA) build.
	$(BIN)/python -m pip install torch==2.13.0
	$(BIN)/python -m pip install -e '.[serve,bench,dev]'
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/corral serve $(ARGS)

# The page tests drive a headless Chromium: Debian's packages, installed when missing (as root, or
# through sudo); without them those tests skip (and fail under CI).
browser:
	@command -v chromedriver >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  command -v apt-get >/dev/null 2>&1 && $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium chromium-driver \
	  >/dev/null; } || echo "chromium and chromium-driver could not be installed"

test: $(STAMP) browser
	# Passive OpenMP waits: spinning threads cost several-fold on shared or busy cores.
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -q $(ARGS)

# Retrain the bundled demo models (tokenizer, corral-demo, corral-demo-draft) on CPU, then measure
# their decode speed into the model cards. About 30 min on 2 free cores, about an hour when shared.
demo-models: $(STAMP)
	$(BIN)/python -m corral.demo.train $(ARGS)
	$(BIN)/python benchmarks/demo_models.py --update-cards

lint: $(STAMP)
	$(BIN)/ruff check corral tests benchmarks
	$(BIN)/ruff format --check corral tests benchmarks
	$(BIN)/mypy --follow-imports=silent corral/core

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
