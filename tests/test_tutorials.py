"""Every tutorial notebook runs top to bottom with tiny settings (``CALMFLOW_TUTORIAL_QUICK=1``).

Each notebook is copied into a temporary folder and executed there with nbclient, so the
committed notebooks (and their outputs, which the docs show) are never rewritten.
"""

from __future__ import annotations

import resource
import shutil
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
NOTEBOOKS = {
    "01_quickstart.ipynb": True,  # needs the real data file
    "02_how_it_works_2d.ipynb": False,
    "03_pretrained_lora.ipynb": False,
    "04_baselines_and_metrics.ipynb": True,
}
TIMEOUT_PER_CELL = 300
BUDGET_SECONDS = 60  # CPU seconds per notebook with quick settings, kernel start-up and imports included


def test_every_tutorial_is_tested():
    assert sorted(p.name for p in TUTORIALS.glob("*.ipynb")) == sorted(NOTEBOOKS)


def test_first_code_cell_reads_the_quick_switch_and_the_data_path():
    for name in NOTEBOOKS:
        nb = nbformat.read(TUTORIALS / name, as_version=4)
        first = next(c for c in nb.cells if c.cell_type == "code")
        assert "CALMFLOW_TUTORIAL_QUICK" in first.source, name
        if NOTEBOOKS[name]:
            assert "CALMFLOW_DATA" in first.source, name


def test_committed_notebooks_carry_their_outputs():
    """The docs render the committed outputs (they are not executed at build time)."""
    for name in NOTEBOOKS:
        nb = nbformat.read(TUTORIALS / name, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(c.get("execution_count") for c in code), f"{name}: not every cell was executed"
        errors = [o for c in code for o in c.outputs if o.output_type == "error"]
        assert not errors, f"{name}: committed with an error output"
        images = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
        assert images, f"{name}: no figures in the committed outputs"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_tutorial_runs_quick(name, tmp_path, request, monkeypatch):
    if NOTEBOOKS[name]:
        data = request.getfixturevalue("norman_path")  # skips with the reason when the file is absent
        monkeypatch.setenv("CALMFLOW_DATA", str(data))
    monkeypatch.setenv("CALMFLOW_TUTORIAL_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # one torch thread: CPU time is the time on a free core
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    copy = tmp_path / name
    shutil.copy(TUTORIALS / name, copy)
    nb = nbformat.read(copy, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=TIMEOUT_PER_CELL,
        kernel_name="python3",  # jupyter_client starts it with this interpreter (sys.executable)
        resources={"metadata": {"path": str(tmp_path)}},
    )
    cpu_before = _children_cpu_seconds()
    start = time.perf_counter()
    client.execute()  # starts the kernel, runs every cell, shuts the kernel down and reaps it
    wall = time.perf_counter() - start
    cpu = _children_cpu_seconds() - cpu_before
    print(f"{name}: {cpu:.1f} s CPU, {wall:.1f} s wall")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert images, "the notebook drew no figure"
    # CPU time of the kernel (one torch thread), so the budget holds however busy the machine is
    assert cpu < BUDGET_SECONDS, f"{name} used {cpu:.0f} s of CPU (wall {wall:.0f} s); budget {BUDGET_SECONDS} s"


def _children_cpu_seconds() -> float:
    """User plus system CPU seconds of this process's finished child processes (the kernels)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
