# Everything a newcomer needs: `make demo` and `make test` set up the
# virtual environment, install Liaison with its tools, and check the
# generated protobuf modules before doing their job.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
BUF_VERSION := 1.75.0
BUF := .tools/node_modules/.bin/buf
# TypeScript code generation and compiler for the wire-contract check
# (tests/test_wire_contract.py): a folder of its own, so that npm does not
# prune buf's.
WIRE_TS := .tools/wire-ts
WIRE_TS_STAMP := $(WIRE_TS)/.installed-stamp
WIRE_TS_PACKAGES := ts-proto@2.7.7 typescript@5.9.3 @grpc/grpc-js@1.14.0 @types/node@26.6.11

.PHONY: help setup proto proto-check wire-tools browser-tools lint typecheck check test test-fast demo bench bench-wan bench-console wan clean

help:
	@echo "make demo    run the whole federation demo (SQLite, loopback)"
	@echo "make test    lint, type-check, check protos, run every test"
	@echo "make bench   benchmarks (federated vs direct call, policy engine, ledger, PDQ index,"
	@echo "             gateway replicas, 100 agencies over an emulated WAN)"
	@echo "make wan     start 100 agencies over an emulated WAN, ask them, stop everything"
	@echo "make bench-console  time every console page against a static file"
	@echo "make proto   regenerate proto/liaison/v1/*_pb2*.py after editing .proto files"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Liaison needs Python 3.11 or newer"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

$(BUF):
	mkdir -p .tools
	cd .tools && npm install --silent --no-save --no-package-lock --no-audit --no-fund @bufbuild/buf@$(BUF_VERSION)

$(WIRE_TS_STAMP): Makefile
	mkdir -p $(WIRE_TS)
	echo '{"private": true}' > $(WIRE_TS)/package.json
	cd $(WIRE_TS) && npm install --silent --no-save --no-package-lock --no-audit --no-fund $(WIRE_TS_PACKAGES)
	@touch $(WIRE_TS_STAMP)

wire-tools: $(WIRE_TS_STAMP)

# The web consoles' tests drive Debian's chromium through chromedriver. Installed
# here where this is Debian and we are root; elsewhere the tests say what is
# missing and skip (under CI=true they fail instead).
BROWSER_PACKAGES := chromium chromium-driver
browser-tools:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's $(BROWSER_PACKAGES) for the console tests"; \
	    apt-get install -y -qq $(BROWSER_PACKAGES) >/dev/null 2>&1 || \
	      { apt-get update -qq && apt-get install -y -qq $(BROWSER_PACKAGES) >/dev/null; }; \
	  else \
	    echo "note: install $(BROWSER_PACKAGES) (Debian) to run the console tests"; \
	  fi; \
	fi

proto: $(STAMP)
	$(PY) -m liaison.protogen

proto-check: $(STAMP) $(BUF)
	$(PY) -m liaison.protogen --check
	cd proto && ../$(BUF) lint

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

check: lint typecheck proto-check

test: check wire-tools browser-tools
	$(VENV)/bin/pytest -n 2 --dist loadfile

test-fast: $(STAMP)
	$(VENV)/bin/pytest -x -q

demo: $(STAMP)
	$(VENV)/bin/liaison demo

bench: $(STAMP)
	$(PY) -m liaison.bench
	$(PY) -m liaison.bench.policy
	$(PY) -m liaison.bench.ledger
	$(PY) -m liaison.bench.pdq
	$(PY) -m liaison.bench.replicas
	$(PY) -m liaison.bench.wan
	$(PY) -m liaison.bench.console

bench-console: $(STAMP)
	$(PY) -m liaison.bench.console

bench-wan: $(STAMP)
	$(PY) -m liaison.bench.wan

wan: $(STAMP)
	$(PY) -m liaison.wan --nodes 100

clean:
	rm -rf $(VENV) .tools .mypy_cache .ruff_cache .pytest_cache .hypothesis
