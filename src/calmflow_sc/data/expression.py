"""Expression matrices: validation and log-normalisation of counts."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

TARGET_SUM = 1e4


def _values(x) -> np.ndarray:
    return x.data if sp.issparse(x) else np.asarray(x).ravel()


def check_expression(x, *, source: str) -> None:
    """Raise a clear error if expression has NaN, infinite or negative values.

    Parameters
    ----------
    x
        Cells x genes matrix (dense or sparse).
    source
        Where the matrix comes from (``"adata.X"``, ``"adata.layers['counts']"``), for messages.
    """
    values = _values(x)
    if values.size == 0:
        return
    if not np.isfinite(values).all():
        n_bad = int((~np.isfinite(values)).sum())
        raise ValueError(f"{source} contains {n_bad} NaN or infinite value(s); clean the data before setup.")
    if values.min() < 0:
        raise ValueError(
            f"{source} contains negative values (min {values.min():.4g}); expected counts or "
            "log-normalised expression (e.g. log1p(normalize_total))."
        )


def looks_like_counts(x, *, n_check: int = 100_000) -> bool:
    """Whether a matrix holds raw counts: non-negative integers, not only 0 and 1.

    Parameters
    ----------
    x
        Cells x genes matrix.
    n_check
        Number of stored values inspected.

    Returns
    -------
    ``True`` when the inspected stored values are all integers and some exceed 1 (log-normalised
    values are almost never integers).
    """
    values = _values(x)[:n_check]
    if values.size == 0:
        return False
    return bool(np.all(np.equal(np.mod(values, 1), 0)) and values.max() > 1)


def log_normalize(x):
    """``log1p(normalize_total(x, target_sum=1e4))`` per cell, keeping sparsity.

    Parameters
    ----------
    x
        Counts, cells x genes (dense or sparse).

    Returns
    -------
    Log-normalised matrix of the same kind.
    """
    if sp.issparse(x):
        x = sp.csr_matrix(x, dtype=np.float32, copy=True)
        totals = np.asarray(x.sum(axis=1)).ravel()
        totals[totals == 0] = 1.0
        x = sp.diags(TARGET_SUM / totals) @ x
        x.data = np.log1p(x.data)
        return x.tocsr()
    x = np.asarray(x, dtype=np.float32)
    totals = x.sum(axis=1, keepdims=True)
    totals[totals == 0] = 1.0
    return np.log1p(x * (TARGET_SUM / totals))
