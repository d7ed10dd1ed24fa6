from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "norman19_mcfaline23_devel.h5ad"


@pytest.fixture(scope="session")
def norman_path() -> Path:
    path = Path(os.environ.get("CALMFLOW_DATA", SHARED_DATA))
    if not path.exists():
        pytest.skip(f"real data file absent: {path} (set CALMFLOW_DATA or place ../shared/data beside the repo)")
    return path
