# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NODE_DEPS := tests/interop/node_modules/.package-lock.json
DURATION ?= 0

.PHONY: all venv demo test lint bench deb clean

all: test

$(STAMP): setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11 or newer is needed (set PYTHON=...)")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,systemd]'
	touch $@

venv: $(STAMP)

# The independent OCPP peer of the interop tests (npm ocpp-rpc, strict mode).
$(NODE_DEPS): tests/interop/package.json tests/interop/package-lock.json
	npm ci --prefix tests/interop --no-audit --no-fund --loglevel=error

# Simulated cluster + demo backend + daemon; Ctrl-C stops all three (or DURATION=seconds).
demo: $(STAMP)
	$(BIN)/charger-gateway demo -c config/demo.yaml --duration $(DURATION)

test: $(STAMP) $(NODE_DEPS) lint
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check gateway tests bench
	$(BIN)/mypy gateway bench

bench: $(STAMP)
	$(BIN)/python bench/poll_cycle.py

# The Debian package: dist/charger-gateway_<version>_<arch>.deb, the app in its own venv under /opt.
deb:
	deploy/build-deb.sh

clean:
	rm -rf $(VENV) .demo tests/interop/node_modules build dist
