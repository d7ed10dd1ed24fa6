"""Synthetic 2-D and high-dimensional distributions used by the paper's benchmarks."""

from __future__ import annotations

import math

import numpy as np
from sklearn.datasets import make_moons


def _rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def eight_gaussians(
    n: int, *, radius: float = 5.0, variance: float = 0.1, seed: int | np.random.Generator | None = None
) -> np.ndarray:
    """Sample the 8-Gaussians mixture: equal weights, centres on a circle.

    Follows the definition used by the CaLMFlow paper (via torchcfm): centres at angles
    ``k * pi / 4`` on a circle of ``radius``, covariance ``sqrt(variance) * I``.

    Parameters
    ----------
    n
        Number of samples.
    radius
        Radius of the circle of centres.
    variance
        The torchcfm ``var`` parameter; each component's covariance is ``sqrt(variance) * I``.
    seed
        Seed or generator.

    Returns
    -------
    Array of shape ``(n, 2)``, float32.
    """
    rng = _rng(seed)
    angles = np.arange(8) * (2 * math.pi / 8)
    centres = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    idx = rng.integers(0, 8, size=n)
    noise = rng.standard_normal((n, 2)) * variance**0.25
    return (centres[idx] + noise).astype(np.float32)


def two_moons(n: int, *, noise: float = 0.2, seed: int | np.random.Generator | None = None) -> np.ndarray:
    """Sample the two-moons distribution (scikit-learn ``make_moons``), scaled as in torchcfm.

    Parameters
    ----------
    n
        Number of samples.
    noise
        Standard deviation of the Gaussian noise of ``make_moons``.
    seed
        Seed or generator.

    Returns
    -------
    Array of shape ``(n, 2)``, float32: ``3 * moons - 1``.
    """
    rng = _rng(seed)
    x, _ = make_moons(n_samples=n, noise=noise, random_state=int(rng.integers(0, 2**31 - 1)))
    return (3.0 * x - 1.0).astype(np.float32)


def standard_normal(n: int, dim: int = 2, *, seed: int | np.random.Generator | None = None) -> np.ndarray:
    """Sample a standard normal in ``dim`` dimensions.

    Parameters
    ----------
    n
        Number of samples.
    dim
        Dimension.
    seed
        Seed or generator.

    Returns
    -------
    Array of shape ``(n, dim)``, float32.
    """
    return _rng(seed).standard_normal((n, dim)).astype(np.float32)


#: The 2-D samplers by name.
TOY_2D = {"8gaussians": eight_gaussians, "moons": two_moons, "normal": standard_normal}
