# Two commands on a fresh machine (see README):
#   make demo   - build .venv, install everything, run the whole pipeline on embedded Tansu + Redis
#   make test   - the same set-up, then the full test suite (unit + integration on real parts)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-unit install redis-server schemas clean

demo: install redis-server
	$(BIN)/omniprofile demo

test: install redis-server
	$(BIN)/python -m pytest

test-unit: install
	$(BIN)/python -m pytest models streams tests/unit

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	@touch $@

# The demo and the integration tests start their own private redis-server; install one where missing.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || sh scripts/install-redis.sh

schemas: install
	$(BIN)/omniprofile schemas

clean:
	rm -rf $(VENV) .omniprofile .pytest_cache *.egg-info
