# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install system-deps demo test bench clean

export KERAS_BACKEND ?= torch

$(STAMP): pyproject.toml requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[rdf,keras,lightning,transformers,postgresql,ui,optuna,keras-tuner,tensorboard,mlflow]' -r requirements-dev.txt
	@touch $(STAMP)

install: $(STAMP)

# What the tests drive and pip cannot install: Debian's chromium for the dashboard's browser
# tests (Playwright cannot download a browser here). Installed when missing if we are root
# (as on CI); otherwise one line naming the command, and stop.
system-deps:
	@sh tools/system-deps.sh

demo: $(STAMP)
	$(PY) examples/demo.py

test: $(STAMP) system-deps
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) benchmarks/capture_bench.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache demo-store
