# Two commands do all the set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint data install clean targets test-arm64

$(STAMP): pyproject.toml runtime/pyproject.toml exporters/pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -c constraints.txt -e runtime -e exporters -e '.[weights,dev]'
	touch $(STAMP)

install: $(STAMP)

data: $(STAMP)
	PY=$(PY) bash scripts/ensure-fashion-mnist.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy runtime/src/edgetl_runtime exporters/src/edgetl_exporters edgetl

test: data lint
	$(VENV)/bin/pytest -q

# The device runtime on ARM64 under qemu user-mode emulation (tests/arm64; scripts/test-arm64.sh).
# Builds its ARM64 Python from Debian arm64 packages + aarch64 wheels (needs root for apt the first
# time), cached in ~/.cache/edgetl/arm64; 4 min 42 s warm on 2 cores (measured, issue 21), cold adds that
# build and the host's export of 5 small bundles (redone whenever a Python source changes).
test-arm64: data
	PY=$(PY) bash scripts/test-arm64.sh

demo: data
	$(VENV)/bin/edgetl demo

# Every export + runtime target in one run (~4.5 min on 2 cores) -> runs/targets/report.md. The targets,
# their thresholds and report are this repository's acceptance harness (benchmarks/targets), not the package's.
# `make targets TARGETS_ARGS=--quick` is a ~35 s smoke run.
TARGETS_ARGS ?=
targets: data
	$(PY) benchmarks/bench_targets.py $(TARGETS_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
