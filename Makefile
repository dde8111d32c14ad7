# One-command set-up: `make demo` runs the main job, `make test` the default test suite.
# Both create (or refresh) the virtual environment in .venv from requirements*.txt first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-all lint bench clean-venv

# The stamp is rebuilt when a requirements file changes or the venv's interpreter is broken.
$(STAMP): requirements.txt requirements-dev.txt
	@if ! $(PY) -c "" 2>/dev/null; then rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); fi
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt -r requirements-dev.txt
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) benchmarks/bench_core.py

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m ""

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	@for f in benchmarks/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

clean-venv:
	rm -rf $(VENV)
