"""The model's representation space: PCA fitted on training cells, invertible to genes."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

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

    @classmethod
    def fit_streaming(
        cls,
        chunks: Callable[[], Iterable[np.ndarray | sp.spmatrix]],
        n_components: int,
        *,
        n_iter: int = 4,
        oversample: int = 20,
        seed: int = 0,
    ) -> PCARepresentation:
        """Fit a PCA reading the cells in chunks, never holding more than one chunk.

        Randomized subspace iteration on the covariance matrix: one pass for the mean, then
        ``n_iter`` passes that each multiply the centred data by a ``(G, D + oversample)`` basis
        (``X^T (X Q)`` summed over chunks), and a last pass for the projected covariance whose
        eigenvectors give the components. Memory is ``O(G (D + oversample))`` besides one chunk;
        sparse chunks stay sparse (centring is applied to the products, not to the data).

        Parameters
        ----------
        chunks
            Called once per pass; returns an iterable of row chunks (cells x genes, log-normalised,
            dense or sparse) covering the same cells every time.
        n_components
            Number of principal components ``D``.
        n_iter
            Subspace iterations (passes over the data besides the first and the last).
        oversample
            Extra basis vectors, for accuracy of the leading ``D``.
        seed
            Seed of the random starting basis.

        Returns
        -------
        The fitted representation.
        """
        total, n_obs, n_vars = None, 0, None
        for chunk in chunks():
            col_sum = np.asarray(chunk.sum(axis=0), dtype=np.float64).ravel()
            total = col_sum if total is None else total + col_sum
            n_obs += chunk.shape[0]
            n_vars = chunk.shape[1]
        if total is None or not 1 <= n_components <= min(n_obs, n_vars):
            raise ValueError(
                f"n_components={n_components} must be between 1 and min(n_cells, n_genes) = {min(n_obs, n_vars or 0)}."
            )
        mean = total / n_obs
        width = min(n_vars, n_components + oversample)

        def covariance_times(basis: np.ndarray) -> np.ndarray:
            """``C @ basis`` with ``C`` the (biased) covariance, streaming over the chunks."""
            out = np.zeros_like(basis)
            low = basis.astype(np.float32)  # float32 products per chunk, float64 sums across chunks
            for chunk in chunks():
                out += np.asarray(chunk.T @ np.asarray(chunk @ low))
            return out / n_obs - np.outer(mean, mean @ basis)

        basis = np.random.default_rng(seed).standard_normal((n_vars, width))
        basis, _ = np.linalg.qr(basis)
        for _ in range(n_iter):
            basis, _ = np.linalg.qr(covariance_times(basis))
        small = basis.T @ covariance_times(basis)
        eigval, eigvec = np.linalg.eigh((small + small.T) / 2)
        order = np.argsort(eigval)[::-1][:n_components]
        components = (basis @ eigvec[:, order]).T
        # deterministic signs: the largest loading of each component is positive
        signs = np.sign(components[np.arange(n_components), np.abs(components).argmax(axis=1)])
        components *= np.where(signs == 0, 1.0, signs)[:, None]
        variance = np.clip(eigval[order], 0.0, None) * n_obs / max(n_obs - 1, 1)
        return cls(mean, components, float(np.sqrt(variance.mean())))

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
        x = (np.asarray(z, dtype=np.float32) * self.scale) @ self.components
        x += self.mean
        return np.clip(x, 0.0, None, out=x) if clip else x

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
        chunk = rows[start : start + chunk_size]
        if len(chunk) and chunk[-1] - chunk[0] + 1 == len(chunk):
            # consecutive rows: a slice, which backed (on-disk) matrices read far faster than a list
            yield x[int(chunk[0]) : int(chunk[-1]) + 1]
        else:
            yield x[chunk]
