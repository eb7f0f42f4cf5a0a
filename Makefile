# One-command entry points. Every target makes its own virtualenv: nothing to install first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# `make demo` needs only the runtime (and the RADIUS and console extras it shows)
DEMO   := $(VENV)/.demo

.PHONY: test demo bench lint clean debian-deps dist mutation

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,dev,radius,postgresql,ui]'
	touch $(STAMP)

# The Debian packages the tests drive for real (PostgreSQL, radclient, pamtester, Chromium):
# installed when missing and we are root; see scripts/debian-deps.sh.
debian-deps:
	@bash scripts/debian-deps.sh

test: $(STAMP) debian-deps
	$(PY) -m pytest -q

$(DEMO): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[radius,ui]'
	touch $(DEMO)

demo: $(DEMO)
	$(VENV)/bin/foblab demo

# The sdist and the wheel an operator installs (docs/operations.md), in dist/.
dist: $(STAMP)
	rm -rf dist
	$(PY) -m build --sdist --wheel --outdir dist .

bench: $(STAMP)
	$(PY) -m bench

# Mutation testing (mutmut), on demand, never in CI: slow. MUTANTS narrows it, e.g.
# make mutation MUTANTS='validator.core*'. Configuration and test selection: pyproject.toml.
MUTANTS ?=
mutation: $(STAMP)
	$(VENV)/bin/mutmut run --max-children 2 $(MUTANTS)
	$(VENV)/bin/mutmut results

lint: $(STAMP)
	$(VENV)/bin/ruff check protocol firmware_sim validator tools foblab tests bench
	$(VENV)/bin/mypy --strict protocol
	$(VENV)/bin/mypy firmware_sim validator tools foblab bench

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache mutants
