"""Condition-level optimal-transport coupling of flow sources with training cells.

Teacher forcing on a straight path reveals its target after one step, so the only step a CaLMFlow
roll-out has to guess is the first one, from the source and the prompt. If a source is paired with
a random cell of its condition, the best guess is the condition's mean, and the generated cells
collapse onto it. Pairing by optimal transport makes the target a (nearly) deterministic function of
the source. Within a minibatch a condition has only a handful of cells (a batch of 128 cells of a
screen with 60 conditions holds about two of each), which makes minibatch OT close to random pairing;
this module pairs each cell with a source by exact OT over (blocks of) *all* the cells of its
condition that the model trains and validates on, re-drawn every epoch.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from calmflow_sc.data.sequences import ControlPool
from calmflow_sc.module.paths import minibatch_ot_permutation

#: Largest number of cells of one condition coupled by one exact OT problem (cost O(n^3) per block).
DEFAULT_BLOCK_SIZE = 512


class ConditionCoupling:
    """A source for every training cell, paired by exact OT within the cell's condition.

    Every :meth:`resample` draws fresh sources for the cells of each condition (standard normal
    noise, or control cells of the condition's context drawn uniformly without replacement where the
    pool is large enough) and assigns them to the cells by exact optimal transport on the squared
    Euclidean cost (POT's network simplex through
    :func:`~calmflow_sc.module.minibatch_ot_permutation`). Conditions larger than ``block_size`` are
    split at random into blocks of at most ``block_size`` cells, each coupled on its own. Sources
    never cross conditions, so the sources of a condition keep the marginal of the source
    distribution (noise, or its context's controls) that prediction starts from. With control
    sources, the cells of the control condition itself are drawn from the same pool, so where a
    context has at most ``block_size`` controls OT couples each control cell with itself: the
    model learns that the control prompt leaves a cell unchanged, the counterfactual a control
    prediction should give.

    Parameters
    ----------
    obs_index
        Row of each coupled cell in the registered AnnData ``(n,)`` (what batches carry).
    targets
        The cells' coordinates in the representation space ``(n, D)``.
    groups
        Condition (perturbation and context) of each cell ``(n,)``.
    source
        ``"noise"`` or ``"control"``.
    contexts
        Context index of each cell ``(n,)`` (required for ``source="control"``).
    control_pool
        Control cells by context (required for ``source="control"``).
    block_size
        Largest OT problem (cells of one condition coupled at once).
    """

    def __init__(
        self,
        obs_index: np.ndarray,
        targets: np.ndarray,
        groups: np.ndarray,
        *,
        source: Literal["noise", "control"],
        contexts: np.ndarray | None = None,
        control_pool: ControlPool | None = None,
        block_size: int = DEFAULT_BLOCK_SIZE,
    ) -> None:
        obs_index = np.asarray(obs_index, dtype=np.int64)
        targets = np.asarray(targets, dtype=np.float32)
        groups = np.asarray(groups)
        if targets.ndim != 2 or targets.shape[0] != obs_index.shape[0] or groups.shape != obs_index.shape:
            raise ValueError(
                f"obs_index {obs_index.shape}, targets {targets.shape} and groups {groups.shape} must describe the "
                "same cells: (n,), (n, D) and (n,)."
            )
        if source not in ("noise", "control"):
            raise ValueError(f"source must be 'noise' or 'control', got {source!r}.")
        if source == "control" and (control_pool is None or contexts is None):
            raise ValueError("source='control' needs contexts and a control pool.")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}.")
        self.source = source
        self.block_size = int(block_size)
        self.targets = torch.as_tensor(targets)
        self.control_pool = control_pool
        n_rows = int(obs_index.max()) + 1 if len(obs_index) else 0
        self._position = torch.full((n_rows,), -1, dtype=torch.long)
        self._position[torch.as_tensor(obs_index)] = torch.arange(len(obs_index))
        _, codes = np.unique(groups, return_inverse=True)
        order = np.argsort(codes, kind="stable")
        bounds = np.flatnonzero(np.diff(codes[order])) + 1
        self._members = [torch.as_tensor(m) for m in np.split(order, bounds)] if len(order) else []
        self._member_context = (
            [int(np.asarray(contexts)[m[0]]) for m in self._members] if contexts is not None else None
        )
        self.sources = torch.zeros_like(self.targets)

    def resample(self, generator: torch.Generator | None = None) -> None:
        """Draw new sources for every cell and couple them to the cells by OT within each condition.

        Parameters
        ----------
        generator
            CPU random generator (block split, source draws).
        """
        # a fresh buffer each time: under ddp_spawn the old one may be shared memory seen by every rank
        sources = torch.empty_like(self.targets)
        for g, members in enumerate(self._members):
            shuffled = members[torch.randperm(len(members), generator=generator)]
            n_blocks = -(-len(shuffled) // self.block_size)
            for block in torch.tensor_split(shuffled, n_blocks):
                drawn = self._draw(len(block), g, generator)
                sources[block] = drawn[minibatch_ot_permutation(drawn, self.targets[block])]
        self.sources = sources

    def _draw(self, n: int, group: int, generator: torch.Generator | None) -> torch.Tensor:
        if self.source == "noise":
            return torch.randn((n, self.targets.shape[1]), generator=generator)
        pool = self.control_pool
        context = self._member_context[group]
        available = pool.available(context)
        if available == 0:
            raise ValueError(f"no control cells for context index {context}.")
        if n <= available:  # uniformly without replacement: the block's sources are a random subset of the pool
            picks = torch.randperm(available, generator=generator)[:n]
        else:
            picks = torch.randint(available, (n,), generator=generator)
        return pool.coordinates[pool.offsets[context] + picks]

    def sources_of(self, obs_index: torch.Tensor) -> torch.Tensor:
        """Return the current sources of cells given by their AnnData rows.

        Parameters
        ----------
        obs_index
            Rows of the registered AnnData, any shape.

        Returns
        -------
        Sources of shape ``obs_index.shape + (D,)`` on the CPU.
        """
        flat = obs_index.detach().cpu().reshape(-1).long()
        if flat.numel() and (int(flat.max()) >= len(self._position) or bool((self._position[flat] < 0).any())):
            raise IndexError("a batch holds cells that the coupling was not built for (held-out or unknown rows).")
        return self.sources[self._position[flat]].view(*obs_index.shape, -1)
