# make demo: the tutorial's flow on the default model.  make test: the test suite.
# Both create .venv and install what they need (torch's CPU build first, so pip never pulls CUDA).
# make test-arm: the native kernels for ARM64, cross-compiled and run under QEMU (tests/arm/run.sh).
# make docs: the documentation site (mkdocs.yml, docs/) into site/, failing on any warning.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH ?= torch==2.13.0

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[torch,onnx,serve,dev]"
	touch $(STAMP)

.PHONY: install demo test test-arm lint format chromium docs
install: $(STAMP)

# FULL=1: the whole test split (245,569 tokens), as in the tutorial; default: a 20,000-token prefix.
demo: $(STAMP)
	$(BIN)/wordlm demo $(if $(FULL),--full,) $(CKPT)

test: $(STAMP) chromium
	$(BIN)/python -m pytest -q

docs: $(STAMP)
	$(BIN)/mkdocs build --strict --site-dir site

# gcc-aarch64-linux-gnu and qemu-user from Debian's packages when missing; no venv needed
test-arm:
	tests/arm/run.sh

# the serve page test drives the system's Chromium (Debian's package; it is skipped without one)
chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
		|| echo "chromium could not be installed: the serve page test will be skipped"

lint: $(STAMP)
	$(BIN)/ruff check wordlm tests benchmarks
	$(BIN)/ruff format --check wordlm tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format wordlm tests benchmarks
	$(BIN)/ruff check --fix wordlm tests benchmarks
