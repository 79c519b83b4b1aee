# metadask: `make demo` and `make test` work on a fresh clone (they create .venv first).
#
#   make venv       create .venv (python3.11, else python3) and install metadask editable
#                   with its test extra; reinstalls only when pyproject.toml changes
#   make demo       synthetic dataset -> trained meta-model -> dataset summary
#   make test       the import contracts (lint-imports), then the test suite without the slow tests
#   make test-slow  only the slow tests
#   make test-ci-slow  the slow tests CI runs after `make test` (all but the 45-minute out-of-core run)
#   make bench      the benchmarks (python -m benchmarks)
#   make clean      remove demo outputs and caches (keeps .venv; `make distclean` removes it)

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3 2>/dev/null)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

DEMO_DATA := demo_data
DEMO_OUT := demo_out

.PHONY: help venv demo test test-slow bench clean distclean

help:
	@sed -n 's/^#   //p' $(firstword $(MAKEFILE_LIST))

venv: $(STAMP)

# The interpreter is an order-only prerequisite: creating it must not force a reinstall,
# only a newer pyproject.toml (or a missing stamp) does.
$(BIN)/python:
	@if [ -z "$(PYTHON)" ]; then echo "make: no python3.11 or python3 on PATH; install Python >= 3.11" >&2; exit 1; fi
	@"$(PYTHON)" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "make: metadask needs Python >= 3.11, found " + sys.version.split()[0] + " ($(PYTHON)); set PYTHON=/path/to/python3.11")'
	"$(PYTHON)" -m venv $(VENV) || { rm -rf $(VENV); exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade pip

# The dependencies are also passed as top-level requirements (read from pyproject.toml):
# installed only as the extra of `.[test]`, pip's resolver backtracks for a very long time
# between boto3 and s3fs's aiobotocore (pinned botocore); as direct requirements it resolves
# in seconds. The stamp is written only after a successful install.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
	print("\n".join(p["dependencies"] + p.get("optional-dependencies", {}).get("test", [])))' > $(VENV)/requirements.txt
	$(BIN)/python -m pip install -e '.[test]' -r $(VENV)/requirements.txt
	touch $@

demo: venv
	$(BIN)/metadask make-dataset $(DEMO_DATA) --genes 300 --overwrite
	$(BIN)/metadask train --dataset $(DEMO_DATA) --out-dir $(DEMO_OUT) --overwrite --n-estimators 200
	$(BIN)/metadask inspect $(DEMO_DATA)
	@echo
	@echo "Demo finished."
	@echo "  dataset:           $(DEMO_DATA)/master (parquet files + gene_manifest.csv)"
	@echo "  model and reports: $(DEMO_OUT)/ (model bundle in $(DEMO_OUT)/model, metrics, plots and summary next to it)"

# The import contracts (layers of docs/architecture.md, in pyproject.toml) are checked first.
# pytest exits with 5 when no test is selected: not a failure here.
test: venv
	$(BIN)/lint-imports --no-cache
	@status=0; $(BIN)/python -m pytest -m "not slow" -q $(PYTEST_ARGS) || status=$$?; \
	if [ $$status -eq 5 ]; then echo "make: no tests collected (pytest exit status 5): OK"; status=0; fi; \
	exit $$status

test-slow: venv
	@status=0; $(BIN)/python -m pytest -m slow -q $(PYTEST_ARGS) || status=$$?; \
	if [ $$status -eq 5 ]; then echo "make: no slow tests collected (pytest exit status 5): OK"; status=0; fi; \
	exit $$status

# CI (.ci/run) adds these after `make test`: every slow test that fits its hour; the out-of-core run at 4x the
# workers' memory (tests/test_out_of_core.py, ~45 min on two cores) is left to `make test-slow`.
test-ci-slow: venv
	@status=0; $(BIN)/python -m pytest -m slow -q $(PYTEST_ARGS) \
		--deselect tests/test_out_of_core.py::test_batch_ensemble_trains_data_four_times_the_worker_memory || status=$$?; \
	if [ $$status -eq 5 ]; then echo "make: no slow tests collected (pytest exit status 5): OK"; status=0; fi; \
	exit $$status

bench: venv
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(DEMO_DATA) $(DEMO_OUT) .pytest_cache build dist dask-worker-space
	find . -path ./$(VENV) -prune -o \( -name __pycache__ -o -name '*.egg-info' \) -type d -print0 | xargs -0 rm -rf

distclean: clean
	rm -rf $(VENV)
