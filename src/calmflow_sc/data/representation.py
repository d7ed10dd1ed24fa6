"""The model's representation space: PCA fitted on training cells, invertible to genes."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp
from sklearn.decomposition import PCA


class PCARepresentation:
    """Linear map between log-normalised expression and (scaled) PCA coordinates.

    Coordinates are divided by one global ``scale`` (the root mean variance of the components)
    so that they are of unit size on average, matching the standard-normal noise source,
    while keeping the geometry of the PCA space.

    Parameters
    ----------
    mean
        Per-gene mean, shape ``(G,)``.
    components
        Loadings, shape ``(D, G)`` (orthonormal rows).
    scale
        Global scale of the coordinates.
    """

    def __init__(self, mean: np.ndarray, components: np.ndarray, scale: float) -> None:
        self.mean = np.ascontiguousarray(mean, dtype=np.float32)
        self.components = np.ascontiguousarray(components, dtype=np.float32)
        self.scale = float(scale)
        if self.components.shape[1] != self.mean.shape[0]:
            raise ValueError(f"components {self.components.shape} do not match mean of {self.mean.shape[0]} genes.")

    @property
    def n_components(self) -> int:
        """Dimension ``D`` of the representation."""
        return self.components.shape[0]

    @classmethod
    def fit(cls, x: np.ndarray | sp.spmatrix, n_components: int, *, seed: int = 0) -> PCARepresentation:
        """Fit a PCA on cells ``x`` (cells x genes, log-normalised).

        Parameters
        ----------
        x
            Expression of the training cells (dense or sparse).
        n_components
            Number of principal components ``D``.
        seed
            Random state of the randomized solver.

        Returns
        -------
        The fitted representation.
        """
        n_obs, n_vars = x.shape
        if not 1 <= n_components <= min(n_obs, n_vars):
            raise ValueError(
                f"n_components={n_components} must be between 1 and min(n_cells, n_genes) = {min(n_obs, n_vars)}."
            )
        dense = x.toarray() if sp.issparse(x) else np.asarray(x)
        pca = PCA(n_components=n_components, svd_solver="auto", random_state=seed).fit(dense.astype(np.float32))
        scale = float(np.sqrt(pca.explained_variance_.mean()))
        return cls(pca.mean_, pca.components_, scale)

    def transform(self, x: np.ndarray | sp.spmatrix) -> np.ndarray:
        """Project expression ``(n, G)`` to scaled coordinates ``(n, D)``.

        Parameters
        ----------
        x
            Log-normalised expression, dense or sparse.

        Returns
        -------
        Coordinates, float32.
        """
        centred_proj = (x @ self.components.T) - (self.mean @ self.components.T)
        return (np.asarray(centred_proj) / self.scale).astype(np.float32)

    def inverse_transform(self, z: np.ndarray, *, clip: bool = True) -> np.ndarray:
        """Map scaled coordinates back to expression, clipping negative values to 0.

        Parameters
        ----------
        z
            Coordinates ``(n, D)``.
        clip
            Clip negative expression to zero.

        Returns
        -------
        Expression ``(n, G)``, float32.
        """
        x = (np.asarray(z, dtype=np.float32) * self.scale) @ self.components + self.mean
        return np.clip(x, 0.0, None) if clip else x

    def residual(self, x: np.ndarray | sp.spmatrix) -> np.ndarray:
        """Part of expression outside the PCA subspace: ``x - inverse_transform(transform(x))``.

        Parameters
        ----------
        x
            Log-normalised expression ``(n, G)``.

        Returns
        -------
        Dense residuals ``(n, G)``, float32.
        """
        dense = x.toarray() if sp.issparse(x) else np.asarray(x)
        return (dense - self.inverse_transform(self.transform(x), clip=False)).astype(np.float32)

    def to_coordinates(self, z: np.ndarray) -> np.ndarray:
        """Undo the global scale: plain PCA coordinates for ``obsm``.

        Parameters
        ----------
        z
            Scaled coordinates.

        Returns
        -------
        PCA coordinates ``z * scale``.
        """
        return np.asarray(z, dtype=np.float32) * self.scale

    def state_dict(self) -> dict[str, np.ndarray | float]:
        """Arrays needed to rebuild the representation."""
        return {"mean": self.mean, "components": self.components, "scale": self.scale}

    @classmethod
    def from_state_dict(cls, state: dict) -> PCARepresentation:
        """Rebuild from :meth:`state_dict` output.

        Parameters
        ----------
        state
            Output of :meth:`state_dict`.

        Returns
        -------
        The representation.
        """
        return cls(state["mean"], state["components"], state["scale"])


def iter_row_chunks(x, rows: np.ndarray, chunk_size: int = 4096) -> Iterator[np.ndarray | sp.spmatrix]:
    """Yield ``x[rows]`` in chunks (works for dense, sparse and backed matrices).

    Parameters
    ----------
    x
        Matrix-like supporting row indexing.
    rows
        Sorted row indices.
    chunk_size
        Rows per chunk.

    Yields
    ------
    Chunks of rows.
    """
    for start in range(0, len(rows), chunk_size):
        yield x[rows[start : start + chunk_size]]
