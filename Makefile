# The two commands a newcomer runs: `make run` (set up + the main job) and `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PRESET ?= quick

.PHONY: setup data run ui test test-slow bench lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1 -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

data: $(STAMP)
	$(PY) -m plasticity prepare-data

run: data
	$(PY) -m plasticity reproduce --preset $(PRESET) --no-progress --out runs/reproduce-$(PRESET)

ui: $(STAMP)
	$(PY) -m plasticity ui

test: data
	$(PY) -m pytest -q

test-slow: data
	$(PY) -m pytest -q -m slow

bench: data
	$(PY) bench/bench_engine.py --out runs/bench.json
	$(PY) bench/bench_evolution.py --out runs/bench_evolution.json
	$(PY) bench/bench_tracking_load.py --trials 64 --repeats 1 --out runs/bench_tracking_load.json

lint: $(STAMP)
	$(VENV)/bin/ruff check platform trainables search_spaces tests bench

clean:
	rm -rf $(VENV) runs mlruns mlflow.db
