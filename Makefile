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

DEMO_DATA := datasets/synthetic-64.zip
DEMO_OUT  := demo-out

# Build the synthetic set on first use, train the demo config on the CPU, then samples, meshes, a video.
demo: $(STAMP)
	test -f $(DEMO_DATA) || $(PY) dataset_tool.py synthetic --dest $(DEMO_DATA) --num-classes 4 \
		--images-per-class 1000 --resolution 64 --workers 2
	$(PY) train.py --cfg demo --device cpu --data $(DEMO_DATA) --outdir $(DEMO_OUT)/runs
	$(PY) gen_samples.py --network $(DEMO_OUT)/runs --class all --seeds 0-3 --trunc 1.0 --views 4 \
		--shapes --shape-res 128 --shape-level auto --outdir $(DEMO_OUT)/samples --device cpu
	$(PY) gen_videos.py --network $(DEMO_OUT)/runs --class all --seeds 0 --frames 60 \
		--trajectory turntable --elevation 20 --resolution 128 --outdir $(DEMO_OUT)/videos --device cpu
	@echo "Demo outputs:"
	@echo "  training run (sample grids fakes*.png, log, snapshots): $$(ls -d $(DEMO_OUT)/runs/* | tail -1)"
	@echo "  samples, depth and meshes (.ply): $(DEMO_OUT)/samples/"
	@echo "  turntable video: $(DEMO_OUT)/videos/"

bench: $(STAMP)
	$(PY) bench/ops.py

clean-venv:
	rm -rf $(VENV)
