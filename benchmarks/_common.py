"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

from pathlib import Path


def git_commit() -> str:
    """Commit of the code that produced the results (with a mark if the tree had changes)."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "src", "benchmarks/*.py"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + (" (with uncommitted changes)" if dirty else "")


def machine() -> str:
    """CPU model, core count and torch threads of this machine, for result headers."""
    import os
    import platform

    import torch

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads, {platform.system()}"


def synthetic_screen_chunk(rows: range, n_genes: int, *, density: float, seed: int):
    """Rows of a synthetic perturbation screen: sparse log-normalised expression and obs.

    Deterministic per row range (seeded by ``seed`` and the first row), so a large file can be
    written chunk by chunk. 10% of cells are controls; the rest carry one of 20 single
    perturbations or 10 doubles of them, which shift the mean of a few genes; 4 cell types.

    Returns
    -------
    ``(csr_matrix float32, obs DataFrame)``.
    """
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng([seed, rows.start])
    n = len(rows)
    singles = [f"G{i}" for i in range(20)]
    doubles = [f"G{i}+G{i + 10}" for i in range(10)]
    conditions = np.array(["control", *singles, *doubles])
    weights = np.array([0.1] + [0.9 * 0.7 / 20] * 20 + [0.9 * 0.3 / 10] * 10)
    cond = rng.choice(len(conditions), size=n, p=weights / weights.sum())
    cell_type = rng.choice(np.array(["t0", "t1", "t2", "t3"]), size=n)
    nnz_per_row = max(1, round(density * n_genes))
    cols = rng.integers(0, n_genes, size=(n, nnz_per_row))
    gene_rate = 0.5 + (np.arange(n_genes) % 7) * 0.3
    values = rng.gamma(2.0, gene_rate[cols] / 2.0).astype(np.float32)
    shift = np.zeros((len(conditions), n_genes), dtype=np.float32)
    for c in range(1, len(conditions)):
        shift[c, (np.arange(5) * 37 + c * 11) % n_genes] = 1.5
    values += shift[cond[:, None], cols]
    rows_idx = np.repeat(np.arange(n), nnz_per_row)
    x = sp.coo_matrix((values.ravel(), (rows_idx, cols.ravel())), shape=(n, n_genes)).tocsr()  # sums repeats
    x.data = np.log1p(x.data)
    obs = pd.DataFrame({"condition": conditions[cond], "cell_type": cell_type}, index=[f"cell{i}" for i in rows])
    return x, obs
