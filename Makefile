# tokensft: `make demo` runs the pipeline end to end (score, enrich, train, report) on the embedded default model;
# `make test` runs the whole suite. Both create .venv and install everything first.
#
# torch is installed on its own, first, as a CPU build pinned by version: a bare `torch`
# requirement can pull a multi-GB CUDA build. Elsewhere, pick your build with e.g.
#   make test TORCH_SPEC="torch==2.13.0" TORCH_INDEX="--index-url https://download.pytorch.org/whl/cpu"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(PY) examples/demo.py --output demo-out

bench: $(STAMP)
	$(PY) benchmarks/bench_score.py
	$(PY) benchmarks/bench_enrich.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_train_switches.py
	$(PY) benchmarks/bench_report.py
	$(PY) benchmarks/bench_eval.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache
