"""Agreement of mean expression between predicted and measured cells."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from anndata import AnnData
from sklearn.metrics import r2_score


def mean_expression(adata: AnnData) -> np.ndarray:
    """Per-gene mean of ``X``.

    Parameters
    ----------
    adata
        Cells.

    Returns
    -------
    Array of length ``n_vars``.
    """
    x = adata.X
    return np.asarray(x.mean(axis=0)).ravel() if sp.issparse(x) else np.asarray(x).mean(axis=0)


def r2_mean(
    pred: AnnData, real: AnnData, *, control: AnnData | None = None, genes: Sequence[str] | None = None
) -> dict[str, float]:
    """R^2 between predicted and measured per-gene means.

    Parameters
    ----------
    pred, real
        Generated and measured cells of one condition (same genes).
    control
        Control cells; adds the scores on deltas from the control mean.
    genes
        Restrict to these genes (e.g. the top DEGs).

    Returns
    -------
    ``r2`` (sklearn ``r2_score``, measured means as truth), ``pearson_r2`` (squared Pearson
    correlation) and, with ``control``, ``r2_delta`` and ``pearson_r2_delta``.
    """
    if not pred.var_names.equals(real.var_names):
        raise ValueError("pred and real must have the same genes in the same order.")
    idx = np.arange(real.n_vars) if genes is None else real.var_names.get_indexer(list(genes))
    if (idx < 0).any():
        raise KeyError(f"genes not found: {np.asarray(list(genes))[idx < 0][:10].tolist()}")
    p, r = mean_expression(pred)[idx], mean_expression(real)[idx]
    out = {"r2": float(r2_score(r, p)), "pearson_r2": _pearson_r2(r, p)}
    if control is not None:
        c = mean_expression(control)[idx]
        out["r2_delta"] = float(r2_score(r - c, p - c))
        out["pearson_r2_delta"] = _pearson_r2(r - c, p - c)
    return out


def _pearson_r2(a: np.ndarray, b: np.ndarray) -> float:
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1] ** 2)


def top_degs(real: AnnData, control: AnnData, n_genes: int = 20, *, method: str = "wilcoxon") -> list[str]:
    """Top differentially expressed genes of a condition against control (scanpy).

    Parameters
    ----------
    real
        Measured cells of the condition.
    control
        Control cells.
    n_genes
        How many genes.
    method
        ``sc.tl.rank_genes_groups`` method.

    Returns
    -------
    Gene names ranked by score (absolute change in either direction is captured by ranking
    by absolute score).
    """
    both = AnnData(
        X=sp.vstack([sp.csr_matrix(real.X), sp.csr_matrix(control.X)]),
        obs=pd.DataFrame(
            {"group": pd.Categorical(["condition"] * real.n_obs + ["control"] * control.n_obs)},
            index=[f"c{i}" for i in range(real.n_obs + control.n_obs)],
        ),
        var=pd.DataFrame(index=real.var_names),
    )
    sc.tl.rank_genes_groups(
        both, "group", groups=["condition"], reference="control", method=method, n_genes=real.n_vars
    )
    result = sc.get.rank_genes_groups_df(both, group="condition")
    result = result.reindex(result["scores"].abs().sort_values(ascending=False).index)
    return result["names"].head(n_genes).astype(str).tolist()
