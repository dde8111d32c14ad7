# One-command set-up: `make demo` runs the main job, `make test` the default test suite.
# Both create (or refresh) the virtual environment in .venv from requirements*.txt first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo reproduce test test-all lint bench clean-venv

# The stamp is rebuilt when a requirements file changes or the venv's interpreter is broken.
$(STAMP): requirements.txt requirements-dev.txt
	@if ! $(PY) -c "" 2>/dev/null; then rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); fi
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt -r requirements-dev.txt
	@touch $(STAMP)

venv: $(STAMP)

# The quick versions of all three experiments, then Fig. 2a-c and Table I, into runs/demo/; then the quick
# robustness sweep (App A over lossy links) into runs/demo/robustness/ (continued if it is there already).
demo: $(STAMP)
	$(PY) -m apps.figures --quick --runs runs/demo
	@if [ -f runs/demo/robustness/config.json ]; then \
		$(PY) -m apps.robustness --resume runs/demo/robustness; \
	else $(PY) -m apps.robustness --quick --out runs/demo/robustness; fi

# The paper-scale experiments (resumable: run it again to continue), then the figures, into runs/paper/.
reproduce: $(STAMP)
	$(PY) -m apps.figures --reproduce --runs runs/paper

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
