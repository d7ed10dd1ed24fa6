# calmflow-sc developer tasks. `make test` builds .venv from the project's own files.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA ?= $(if $(CALMFLOW_DATA),$(CALMFLOW_DATA),../shared/data/norman19_mcfaline23_devel.h5ad)

.PHONY: venv test lint demo bench clean docs peers peers-env tutorials

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -c constraints.txt "torch==2.13.0"
	$(PY) -m pip install -c constraints.txt -e ".[dev]"
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks tutorials/execute.py

test: lint
	$(PY) -m pytest -n 2 --dist loadfile

demo: $(STAMP)
	@test -f "$(DATA)" || { echo "Data file not found: $(DATA)"; echo "Put norman19_mcfaline23_devel.h5ad in ../shared/data/ or run: make demo DATA=/path/to/file.h5ad"; exit 2; }
	$(PY) -m calmflow_sc.demo --data "$(DATA)" --out demo_output

# Budget (wall time of the committed runs on the 2-core dev machine; more when it is shared): toy2d ~8 min,
# toy2d_ablations ~36 min, highdim ~8 min, norman_combos ~10 min, cell_line_transfer ~2 min, metrics_speed ~2 min,
# assemble_results seconds: about 65 min in all. `make peers`, benchmarks/speed.py (~5 min) and benchmarks/scale.py (~3 min) run apart.
bench: $(STAMP)
	$(PY) benchmarks/toy2d.py
	OMP_NUM_THREADS=1 $(PY) benchmarks/toy2d_ablations.py --budget 40 --threads 1
	OMP_NUM_THREADS=1 $(PY) benchmarks/highdim.py --threads 1
	$(PY) benchmarks/norman_combos.py --data "$(DATA)"
	OMP_NUM_THREADS=1 $(PY) benchmarks/cell_line_transfer.py --data "$(DATA)" --threads 1
	OMP_NUM_THREADS=1 $(PY) benchmarks/metrics_speed.py --threads 1
	$(PY) benchmarks/assemble_results.py

# Peer methods (CPA, CellFlow) on the held-out Norman doubles, each in its own venv (never a dependency of the package).
PEERS := benchmarks/peers
PEERS_WORK ?= $(PEERS)/work
CPA_VENV := $(PEERS)/.venv-cpa
CELLFLOW_VENV := $(PEERS)/.venv-cellflow
PEER_BUDGET ?= 300

$(CPA_VENV)/.installed: $(PEERS)/requirements-cpa.txt constraints.txt
	test -x $(CPA_VENV)/bin/python || $(PYTHON) -m venv $(CPA_VENV)
	$(CPA_VENV)/bin/pip install -c constraints.txt "torch==2.13.0"
	$(CPA_VENV)/bin/pip install -c constraints.txt -r $(PEERS)/requirements-cpa.txt
	$(CPA_VENV)/bin/pip install -c constraints.txt --no-deps "cpa-tools==0.8.1"
	touch $@

$(CELLFLOW_VENV)/.installed: $(PEERS)/requirements-cellflow.txt constraints.txt
	test -x $(CELLFLOW_VENV)/bin/python || $(PYTHON) -m venv $(CELLFLOW_VENV)
	$(CELLFLOW_VENV)/bin/pip install -c constraints.txt -r $(PEERS)/requirements-cellflow.txt
	touch $@

peers-env: $(CPA_VENV)/.installed $(CELLFLOW_VENV)/.installed

# about 15 min on 2 cores once the venvs exist: export (s), CPA and CellFlow ($(PEER_BUDGET) s training each), scoring
peers: $(STAMP) peers-env
	@test -f "$(DATA)" || { echo "Data file not found: $(DATA)"; exit 2; }
	$(PY) $(PEERS)/export_split.py --data "$(DATA)" --work $(PEERS_WORK)
	$(CPA_VENV)/bin/python $(PEERS)/run_cpa.py --work $(PEERS_WORK) --budget $(PEER_BUDGET)
	$(CELLFLOW_VENV)/bin/python $(PEERS)/run_cellflow.py --work $(PEERS_WORK) --budget $(PEER_BUDGET)
	$(PY) $(PEERS)/evaluate_peers.py --data "$(DATA)" --work $(PEERS_WORK)

# Execute the tutorials in place with their full settings (the docs render these committed outputs); ~4 min.
tutorials: $(STAMP)
	CALMFLOW_DATA="$(abspath $(DATA))" $(PY) tutorials/execute.py

# HTML documentation in docs/_build/html (warnings are errors); tutorials are rendered with their committed outputs.
$(VENV)/.docs-installed: $(STAMP)
	$(PY) -m pip install -c constraints.txt -e ".[dev,docs]"
	touch $@

docs: $(VENV)/.docs-installed
	$(VENV)/bin/sphinx-build -W --keep-going -b html docs docs/_build/html

clean:
	rm -rf $(VENV) demo_output .pytest_cache .ruff_cache docs/_build
