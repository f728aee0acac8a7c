# Each target sets itself up: a fresh clone needs only Python 3.11 and pip.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
DEMO_DIR := .demo
DEMO_MODELS := resnet10t regnetx_002 lcnet_050 mobilenetv3_small_100

export PYTHONPATH := $(CURDIR)/plugins
export HF_HUB_OFFLINE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup demo test bench clean

setup: $(INSTALLED)

# Reinstalls only when a requirements file changed since the last install.
$(INSTALLED): requirements.txt requirements-local.txt requirements-test.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt -r requirements-local.txt -r requirements-test.txt 2>&1 \
		| { grep -v "^WARNING: Location 'file:" || true; }
	touch $@

demo: $(INSTALLED)
	$(BIN)/python include/demo_trainer.py $(DEMO_DIR) $(DEMO_MODELS)

test: $(INSTALLED)
	$(BIN)/python -m pytest

bench: $(INSTALLED)
	$(BIN)/python benchmarks/bench_trainer.py

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
