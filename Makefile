# Two commands for a new user: `make demo` and `make test`. Both set up .venv when needed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# The CPU build of torch that lies on this machine's disk; GPU users: see README ("CUDA build").
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: all setup test demo bench clean-venv

all: test

setup: $(STAMP)

# Re-runs only when pyproject.toml changes; an existing torch is kept (pip sees it satisfied).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) bench/ops.py --quick

bench: $(STAMP)
	$(PY) bench/ops.py

clean-venv:
	rm -rf $(VENV)
