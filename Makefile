# make demo: the tutorial's flow on the default model.  make test: the test suite.
# Both create .venv and install what they need (torch's CPU build first, so pip never pulls CUDA).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH ?= torch==2.13.0

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[onnx,dev]"
	touch $(STAMP)

.PHONY: install demo test lint format
install: $(STAMP)

# FULL=1: the whole test split (245,569 tokens), as in the tutorial; default: a 20,000-token prefix.
demo: $(STAMP)
	$(BIN)/wordlm demo $(if $(FULL),--full,) $(CKPT)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check wordlm tests benchmarks
	$(BIN)/ruff format --check wordlm tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format wordlm tests benchmarks
	$(BIN)/ruff check --fix wordlm tests benchmarks
