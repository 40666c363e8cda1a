# Two entry points for a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8080

.PHONY: serve test lint node-deps clean

# constraints.txt pins every package (the tools too) to the versions last tested together
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,geo]'
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/vastserver serve --host $(HOST) --port $(PORT)

node-deps:
	@if command -v npm >/dev/null 2>&1; then \
		cd tests/node && npm install --silent --no-audit --no-fund >/dev/null 2>&1 || echo "npm install failed: player-library tests will skip"; \
	else echo "npm not found: player-library tests will skip"; fi

test: $(STAMP) node-deps
	$(BIN)/python -m pytest -q
	$(BIN)/ruff check vastserver tests benchmarks
	$(BIN)/mypy

lint: $(STAMP)
	$(BIN)/ruff check vastserver tests benchmarks
	$(BIN)/mypy

clean:
	rm -rf $(VENV) tests/node/node_modules
