"""The README's usage example runs on the real data (with tiny settings)."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

README = Path(__file__).resolve().parents[1] / "README.md"
SMALLER = {
    "max_epochs=20": "max_steps=2, enable_progress_bar=False",
    'n_components=50, backbone="gpt-neox-small"': 'n_components=8, backbone="gpt-neox-tiny", n_time_points=4',
    "n_cells=500": "n_cells=20",
}


@pytest.mark.realdata
def test_readme_example_runs(norman_path, tmp_path, monkeypatch):
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    code = code.replace('"screen.h5ad"', repr(str(norman_path)))
    for old, new in SMALLER.items():
        assert old in code, f"README example changed: {old!r} not found; update this test"
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    pred = namespace["pred"]
    assert pred.n_obs == 20 and (pred.obs["condition"] == "KLF1+MAP2K6").all()
    assert "origin" in namespace["combined"].obs
    assert (tmp_path / "klf1_model").is_dir()
