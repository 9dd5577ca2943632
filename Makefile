# make demo: the tutorial's flow on the default model.  make test: the test suite.
# Both create .venv and install what they need (torch's CPU build first, so pip never pulls CUDA).
# make test-wheel (part of make test): the wheel of `python -m build` in a fresh venv without torch
# (tests/wheel/check.sh).
# make test-arm: the native kernels for ARM64, cross-compiled and run under QEMU (tests/arm/run.sh), and
# libwordlm's example built for ARM64 and run there.
# make lib: libwordlm (build/lib/libwordlm.so; its header is wordlm/native/wordlm.h), the runtime as a C
# library; make example: examples/c/next_words (and its libwordlm.so), which `make test` also builds and
# holds to the Python runtime (tests/test_libwordlm.py).
# make test-simde: the AVX2 and AVX-512 VNNI kernels compiled against SIMDe (portable C), held to the
# reference on any x86-64 (tests/native_simde.py); `make test` runs them too, with everything else.
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

.PHONY: install demo test test-wheel test-arm simde test-simde lint format chromium docs lib example
install: $(STAMP)

# FULL=1: the whole test split (245,569 tokens), as in the tutorial; default: a 20,000-token prefix.
demo: $(STAMP)
	$(BIN)/wordlm demo $(if $(FULL),--full,) $(CKPT)

# the SIMDe build first, so that a compile error is one clear line here and not an error per test
test: $(STAMP) chromium simde example test-wheel
	$(BIN)/python -m pytest -q

# the C library and the example (cc, setup.py's flags, no Python)
lib:
	mkdir -p build/lib
	$(MAKE) -C examples/c OUT=$(CURDIR)/build/lib $(CURDIR)/build/lib/libwordlm.so

example:
	$(MAKE) -C examples/c

# the wheel installed with nothing beside it (no repo, no torch, no network) runs generate, eval and serve
# on the model packaged inside it (~1 min; the venv's packages come from pip's cache)
test-wheel: $(STAMP)
	tests/wheel/check.sh $(BIN)/python

# build/simde/libwordlm_simde-HASH.so, rebuilt when the sources, flags, compiler or SIMDe change (on x86;
# elsewhere nothing to do)
simde: $(STAMP)
	$(BIN)/python tests/native_simde.py

# the tests of every kernel and cell that run the emulated tables (~20 s)
test-simde: simde
	$(BIN)/python -m pytest -q -k simde tests/test_native.py tests/test_runtime.py

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
