# portjournal — two commands on a fresh machine: `make demo` (the main job) and `make test`.
# Both depend on the setup stamp, so they install what they need first.

PYTHON  ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.setup-stamp
JOBS    ?= auto

.PHONY: setup test test-host test-hdl lint demo bench-dpll clean distclean

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

test: $(STAMP)
	$(BIN)/pytest -n $(JOBS) $(PYTEST_ARGS)

test-host: $(STAMP)
	$(BIN)/pytest -n $(JOBS) tests/controller $(PYTEST_ARGS)

test-hdl: $(STAMP)
	$(BIN)/pytest -n $(JOBS) tests/gateware $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

bench-dpll: $(STAMP)
	$(BIN)/python bench/dpll.py $(BENCH_ARGS)

demo: $(STAMP)
	$(BIN)/portjournal --help

clean:
	rm -rf build .pytest_cache

distclean: clean
	rm -rf $(VENV)
