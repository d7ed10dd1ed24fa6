"""Forming multi-trajectory sequences and drawing flow sources (noise or control cells)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

Pairing = Literal["random", "ot"]


def group_into_sequences(
    keys: torch.Tensor, n_trajectories: int, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Group batch rows that share a condition into sequences of ``P`` trajectories.

    Each condition's rows are shuffled and cut into groups of ``P``; the last group of a
    condition is filled by resampling that condition's rows.

    Parameters
    ----------
    keys
        Condition key per row, shape ``(B,)``.
    n_trajectories
        ``P``.
    generator
        Random generator (CPU).

    Returns
    -------
    Row indices of shape ``(S, P)``; all rows of one sequence share a key.
    """
    if n_trajectories == 1:
        return torch.arange(keys.shape[0], device=keys.device).unsqueeze(1)
    keys_cpu = keys.detach().cpu()
    groups = []
    for key in torch.unique(keys_cpu):
        rows = torch.nonzero(keys_cpu == key).squeeze(1)
        rows = rows[torch.randperm(rows.numel(), generator=generator)]
        short = (-rows.numel()) % n_trajectories
        if short:
            fill = rows[torch.randint(rows.numel(), (short,), generator=generator)]
            rows = torch.cat([rows, fill])
        groups.append(rows.view(-1, n_trajectories))
    return torch.cat(groups).to(keys.device)


class ControlPool:
    """Control cells in representation space, indexed by context, to start flows from.

    Parameters
    ----------
    coordinates
        Control cells' coordinates ``(n, D)``.
    contexts
        Context index of each control cell ``(n,)``.
    names
        Optional obs names of the cells, kept in the pool's order (index with what
        :meth:`sample` returns).
    residuals
        Optional per-cell arrays (e.g. expression outside the PCA subspace), kept likewise.
    """

    def __init__(
        self,
        coordinates: np.ndarray,
        contexts: np.ndarray,
        names: np.ndarray | None = None,
        residuals: np.ndarray | None = None,
    ) -> None:
        order = np.argsort(contexts, kind="stable")
        self.coordinates = torch.as_tensor(np.asarray(coordinates)[order], dtype=torch.float32)
        self.contexts = np.asarray(contexts)[order]
        self.names = None if names is None else np.asarray(names)[order]
        self.residuals = None if residuals is None else np.asarray(residuals)[order]
        n_context = int(self.contexts.max()) + 1 if len(self.contexts) else 0
        counts = np.bincount(self.contexts, minlength=n_context) if len(self.contexts) else np.zeros(0, int)
        self.counts = torch.as_tensor(counts, dtype=torch.long)
        self.offsets = torch.as_tensor(np.concatenate([[0], np.cumsum(counts)[:-1]]), dtype=torch.long)

    def available(self, context: int) -> int:
        """Return the number of control cells of a context."""
        return int(self.counts[context]) if context < len(self.counts) else 0

    def sample(
        self, contexts: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw one control cell (with replacement) for every entry of ``contexts``.

        Parameters
        ----------
        contexts
            Context index per draw, any shape.
        generator
            Random generator (CPU).

        Returns
        -------
        Coordinates of shape ``contexts.shape + (D,)`` and the drawn pool indices.
        """
        flat = contexts.detach().cpu().reshape(-1)
        if flat.numel() and (int(flat.max()) >= len(self.counts) or bool((self.counts[flat] == 0).any())):
            missing = sorted({int(c) for c in flat if self.available(int(c)) == 0})
            raise ValueError(f"no control cells for context index(es) {missing}.")
        u = torch.rand(flat.shape, generator=generator)
        idx = self.offsets[flat] + (u * self.counts[flat]).long().clamp(max=self.counts[flat] - 1)
        coords = self.coordinates[idx].view(*contexts.shape, -1).to(contexts.device)
        return coords, idx.view(contexts.shape)

    def sources_for(
        self, targets: torch.Tensor, contexts: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Independent control sources for targets ``(S, P, D)`` with one context per sequence ``(S,)``.

        The paper's random pairing; optimal-transport pairing over whole conditions is
        :class:`~calmflow_sc.data.ConditionCoupling`.

        Parameters
        ----------
        targets
            Target cells grouped into sequences.
        contexts
            Context index of each sequence.
        generator
            Random generator (CPU).

        Returns
        -------
        Sources of the same shape as ``targets``.
        """
        s, p, _ = targets.shape
        sources, _ = self.sample(contexts.unsqueeze(1).expand(s, p), generator=generator)
        return sources
