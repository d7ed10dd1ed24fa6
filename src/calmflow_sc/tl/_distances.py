"""Distances between two sets of cells: MMD, energy distance, 2-Wasserstein."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import ot
import scipy.sparse as sp
import torch
from anndata import AnnData

_BLOCK = 2048


def _as_array(x: np.ndarray | AnnData, key: str | None) -> np.ndarray:
    if isinstance(x, AnnData):
        x = x.X if key is None or key == "X" else x.obsm[key]
    if sp.issparse(x):
        x = x.toarray()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected a (cells, features) matrix, got shape {x.shape}.")
    return x


def _pair(x, y, key):
    a, b = _as_array(x, key), _as_array(y, key)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"the two sets have different feature counts: {a.shape[1]} vs {b.shape[1]}.")
    if len(a) == 0 or len(b) == 0:
        raise ValueError(f"both sets need at least one cell, got {len(a)} and {len(b)}.")
    return torch.from_numpy(a), torch.from_numpy(b)


def _block_sum(a: torch.Tensor, b: torch.Tensor | None, fn, *, squared: bool = False) -> torch.Tensor:
    """Sum of ``fn(D)`` over all pairs, ``D`` the Euclidean distances (squared if ``squared``).

    Computed block by block (memory O(block^2)); ``fn`` may work in place on its argument. With
    ``b=None`` the pairs are those of ``a`` with itself: only the blocks on and above the diagonal
    are computed and those above it counted twice.
    """
    symmetric = b is None
    b = a if symmetric else b
    total = torch.zeros((), dtype=torch.float64)
    for i in range(0, len(a), _BLOCK):
        for j in range(i if symmetric else 0, len(b), _BLOCK):
            d = torch.cdist(a[i : i + _BLOCK], b[j : j + _BLOCK])
            block = fn(d.square_() if squared else d).sum(dtype=torch.float64)
            total += 2 * block if symmetric and j > i else block
    return total


def median_distance(
    x: np.ndarray | AnnData, y: np.ndarray | AnnData, *, key: str | None = None, max_cells: int = 2000, seed: int = 0
) -> float:
    """Median pairwise Euclidean distance within the pooled sets (the median heuristic).

    Parameters
    ----------
    x, y
        Cell sets (arrays or AnnData with ``key``).
    key
        ``obsm`` key, or ``None`` / ``"X"`` for ``X``.
    max_cells
        Subsample the pooled set to this many cells.
    seed
        Seed of the subsample.

    Returns
    -------
    The median distance.
    """
    a, b = _pair(x, y, key)
    pooled = torch.cat([a, b])
    if len(pooled) > max_cells:
        pooled = pooled[torch.from_numpy(np.random.default_rng(seed).choice(len(pooled), max_cells, replace=False))]
    d = torch.cdist(pooled, pooled)
    return float(d[torch.triu_indices(len(d), len(d), 1).unbind()].median())


def mmd(
    x: np.ndarray | AnnData,
    y: np.ndarray | AnnData,
    *,
    key: str | None = None,
    widths: Sequence[float] | None = None,
    width_factors: Sequence[float] = (0.5, 1.0, 2.0),
) -> float:
    """Squared maximum mean discrepancy with a multi-scale RBF kernel (biased V-statistic).

    ``k(a, b) = mean_s exp(-||a - b||^2 / (2 s^2))`` over widths ``s``. By default the widths are
    ``width_factors`` times the median pairwise distance of the pooled sets, so the value is
    symmetric in ``x`` and ``y``; pass ``widths`` to fix them across comparisons.

    Parameters
    ----------
    x, y
        Cell sets (cells x features arrays, or AnnData with ``key``).
    key
        ``obsm`` key, or ``None`` / ``"X"`` for ``X``.
    widths
        Kernel widths ``s``.
    width_factors
        Multiples of the median distance used when ``widths`` is ``None``.

    Returns
    -------
    ``MMD^2 >= 0`` (0 for identical sets).
    """
    a, b = _pair(x, y, key)
    if widths is None:
        med = median_distance(a.numpy(), b.numpy())
        widths = [f * (med if med > 0 else 1.0) for f in width_factors]
    widths = [float(w) for w in widths]
    if any(w <= 0 for w in widths):
        raise ValueError(f"kernel widths must be positive, got {widths}.")

    scales = [-1.0 / (2 * w**2) for w in widths]

    def kernel(sq: torch.Tensor) -> torch.Tensor:  # sum over widths; the mean is taken below
        out = torch.exp(sq * scales[0])
        for scale in scales[1:]:
            out += torch.exp(sq * scale)
        return out

    kxx = _block_sum(a, None, kernel, squared=True) / len(a) ** 2
    kyy = _block_sum(b, None, kernel, squared=True) / len(b) ** 2
    kxy = _block_sum(a, b, kernel, squared=True) / (len(a) * len(b))
    return max(float(kxx + kyy - 2 * kxy) / len(widths), 0.0)


def energy_distance(
    x: np.ndarray | AnnData, y: np.ndarray | AnnData, *, key: str | None = None, squared: bool = False
) -> float:
    """Energy distance ``2 E|X-Y| - E|X-X'| - E|Y-Y'|`` (Székely), V-statistic.

    Parameters
    ----------
    x, y
        Cell sets (arrays or AnnData with ``key``).
    key
        ``obsm`` key, or ``None`` / ``"X"`` for ``X``.
    squared
        Use squared Euclidean distances inside the expectation. Then the statistic equals
        ``2 ||mean(x) - mean(y)||^2`` and only compares means; the default (plain Euclidean) is
        a metric on distributions.

    Returns
    -------
    The energy distance (>= 0; 0 for identical sets).
    """
    a, b = _pair(x, y, key)

    def identity(d: torch.Tensor) -> torch.Tensor:
        return d

    exy = _block_sum(a, b, identity, squared=squared) / (len(a) * len(b))
    exx = _block_sum(a, None, identity, squared=squared) / len(a) ** 2
    eyy = _block_sum(b, None, identity, squared=squared) / len(b) ** 2
    return max(float(2 * exy - exx - eyy), 0.0)


def wasserstein(
    x: np.ndarray | AnnData,
    y: np.ndarray | AnnData,
    *,
    key: str | None = None,
    max_cells: int = 2000,
    method: str = "exact",
    epsilon: float = 0.05,
    seed: int = 0,
) -> float:
    """2-Wasserstein distance between two cell sets with POT.

    Parameters
    ----------
    x, y
        Cell sets (arrays or AnnData with ``key``).
    key
        ``obsm`` key, or ``None`` / ``"X"`` for ``X``.
    max_cells
        Each set is subsampled to at most this many cells (exact OT is cubic).
    method
        ``"exact"`` (network simplex, ``ot.emd2``) or ``"sinkhorn"`` (entropic, ``ot.sinkhorn2``).
    epsilon
        Entropic regularisation for Sinkhorn, relative to the mean squared cost.
    seed
        Seed of the subsamples.

    Returns
    -------
    ``sqrt`` of the optimal mean squared Euclidean transport cost.
    """
    a, b = (t.numpy() for t in _pair(x, y, key))
    rng = np.random.default_rng(seed)
    if len(a) > max_cells:
        a = a[rng.choice(len(a), max_cells, replace=False)]
    if len(b) > max_cells:
        b = b[rng.choice(len(b), max_cells, replace=False)]
    cost = ot.dist(a, b, metric="sqeuclidean")
    wa, wb = np.full(len(a), 1 / len(a)), np.full(len(b), 1 / len(b))
    if method == "exact":
        value = ot.emd2(wa, wb, cost, numItermax=10**7)
    elif method == "sinkhorn":
        scale = cost.mean() if cost.mean() > 0 else 1.0
        value = ot.sinkhorn2(wa, wb, cost / scale, reg=epsilon) * scale
    else:
        raise ValueError(f"method must be 'exact' or 'sinkhorn', got {method!r}.")
    return float(np.sqrt(max(float(value), 0.0)))
