# calmflow-sc developer tasks. `make test` builds .venv from the project's own files.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA ?= $(if $(CALMFLOW_DATA),$(CALMFLOW_DATA),../shared/data/norman19_mcfaline23_devel.h5ad)

.PHONY: venv test lint demo bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -c constraints.txt "torch==2.13.0"
	$(PY) -m pip install -c constraints.txt -e ".[dev]"
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

test: lint
	$(PY) -m pytest -n 2 --dist loadfile

demo: $(STAMP)
	@test -f "$(DATA)" || { echo "Data file not found: $(DATA)"; echo "Put norman19_mcfaline23_devel.h5ad in ../shared/data/ or run: make demo DATA=/path/to/file.h5ad"; exit 2; }
	$(PY) -m calmflow_sc.demo --data "$(DATA)" --out demo_output

bench: $(STAMP)
	$(PY) benchmarks/toy2d.py
	$(PY) benchmarks/norman_combos.py --data "$(DATA)"

clean:
	rm -rf $(VENV) demo_output .pytest_cache .ruff_cache
