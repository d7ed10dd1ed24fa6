"""Training paths for CaLMFlow: the time grid, straight paths and source/target pairing."""

from __future__ import annotations

import numpy as np
import ot
import torch


def time_grid(n_time_points: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """Return the deterministic time grid ``t_i = i / (N - 1)`` with both endpoints.

    Parameters
    ----------
    n_time_points
        Number of grid points ``N`` (at least 2).
    device
        Device of the returned tensor.

    Returns
    -------
    Tensor of shape ``(N,)`` from 0 to 1.
    """
    if n_time_points < 2:
        raise ValueError(f"n_time_points must be >= 2, got {n_time_points}.")
    return torch.linspace(0.0, 1.0, n_time_points, device=device)


def straight_paths(
    x0: torch.Tensor,
    x1: torch.Tensor,
    n_time_points: int,
    *,
    sigma: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Discretise straight paths ``z_i = (1 - t_i) x0 + t_i x1`` on the time grid.

    Parameters
    ----------
    x0
        Sources, shape ``(..., D)``.
    x1
        Targets, same shape as ``x0``.
    n_time_points
        Number of grid points ``N``.
    sigma
        Standard deviation of Gaussian path noise added at the interior points
        (the endpoints stay exactly ``x0`` and ``x1``).
    generator
        Random generator for the path noise.

    Returns
    -------
    Tensor of shape ``(..., N, D)``.
    """
    if x0.shape != x1.shape:
        raise ValueError(f"x0 and x1 must have the same shape, got {tuple(x0.shape)} and {tuple(x1.shape)}.")
    t = time_grid(n_time_points, device=x0.device).to(x0.dtype)
    t = t.view(*([1] * (x0.dim() - 1)), n_time_points, 1)
    z = (1.0 - t) * x0.unsqueeze(-2) + t * x1.unsqueeze(-2)
    if sigma > 0 and n_time_points > 2:
        noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        noise[..., 0, :] = 0.0
        noise[..., -1, :] = 0.0
        z = z + sigma * noise
    return z


def minibatch_ot_permutation(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """Pair sources with targets by exact optimal transport within a minibatch.

    Uses POT's network-simplex solver (``ot.emd``) on the squared Euclidean cost with
    uniform weights; for equal batch sizes the plan is a permutation.

    Parameters
    ----------
    x0
        Sources, shape ``(B, D)``.
    x1
        Targets, shape ``(B, D)``.

    Returns
    -------
    Index tensor ``perm`` of shape ``(B,)`` such that ``x0[perm][j]`` is paired with ``x1[j]``.
    """
    if x0.dim() != 2 or x0.shape != x1.shape:
        raise ValueError(f"expected two (B, D) tensors of equal shape, got {tuple(x0.shape)}, {tuple(x1.shape)}.")
    n = x0.shape[0]
    cost = torch.cdist(x0.detach().double().cpu(), x1.detach().double().cpu()).pow(2).numpy()
    weights = np.full(n, 1.0 / n)
    plan = ot.emd(weights, weights, cost)
    perm = np.argmax(plan, axis=0)
    return torch.as_tensor(perm, device=x0.device, dtype=torch.long)
