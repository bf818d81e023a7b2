# Civica: `make demo` runs the platform with a seeded city, `make test` runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# A real third-party NGSI-LD client for tests/test_ngsildclient.py; it pins old rich/httpx,
# so it gets its own venv.
NGSILDCLIENT_VERSION := 0.5.2
CLIENT_VENV := .venv-ngsildclient
CLIENT_STAMP := $(CLIENT_VENV)/.installed-$(NGSILDCLIENT_VERSION)

.PHONY: demo test check bench clean $(CLIENT_VENV)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

$(CLIENT_STAMP):
	@test -x $(CLIENT_VENV)/bin/python || $(PYTHON) -m venv $(CLIENT_VENV)
	$(CLIENT_VENV)/bin/python -m pip install --quiet 'ngsildclient==$(NGSILDCLIENT_VERSION)'
	@rm -f $(CLIENT_VENV)/.installed-*
	@touch $(CLIENT_STAMP)

$(CLIENT_VENV): $(CLIENT_STAMP)

demo: $(STAMP)
	$(BIN)/civica demo

test: $(STAMP) $(CLIENT_VENV)
	$(BIN)/python -m pytest -q

check: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/python benchmarks/ingest.py

clean:
	rm -rf $(VENV) $(CLIENT_VENV) .pytest_cache .mypy_cache .ruff_cache
