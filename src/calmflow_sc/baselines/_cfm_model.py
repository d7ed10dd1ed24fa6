"""Conditional flow matching on AnnData: the paper's main competitor, same predict call shape.

Cells are represented in a PCA space fitted on the training cells; a velocity MLP is
conditioned on the multi-hot parts of the perturbation (so combinations are the sum of their
parts) and the one-hot context, and integrated with torchdiffeq from noise or from control
cells of the same context.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData

from calmflow_sc.baselines.cfm import VelocityField, cfm_loss, cfm_sample
from calmflow_sc.data.prompts import PromptBuilder
from calmflow_sc.data.representation import PCARepresentation


class CFMBaseline:
    """Conditional (OT-)CFM with an MLP velocity field and an ODE solver.

    Parameters
    ----------
    adata
        Training cells (log-normalised ``X``); held-out conditions must already be removed.
    perturbation_key
        obs column with the perturbation.
    control_value
        Control label.
    context_keys
        obs columns encoded one-hot as condition.
    delimiter
        Combination delimiter.
    n_components
        PCA dimension.
    source
        ``"noise"`` or ``"control"`` (controls of the same context).
    ot_pairing
        Minibatch exact-OT pairing of sources and targets (OT-CFM).
    hidden, n_layers
        Velocity MLP size.
    """

    def __init__(
        self,
        adata: AnnData,
        *,
        perturbation_key: str,
        control_value: str = "control",
        context_keys: Sequence[str] = (),
        delimiter: str = "+",
        n_components: int = 50,
        source: Literal["noise", "control"] = "control",
        ot_pairing: bool = True,
        hidden: int = 512,
        n_layers: int = 4,
        seed: int = 0,
    ) -> None:
        self.key, self.control_value = perturbation_key, control_value
        self.context_keys = list(context_keys)
        self.builder = PromptBuilder(tuple(self.context_keys), control_value, delimiter)
        self.source, self.ot_pairing = source, ot_pairing
        self.adata = adata
        self.rep = PCARepresentation.fit(adata.X, n_components, seed=seed)
        x = adata.X
        self.z = torch.from_numpy(self.rep.transform(x))
        dense = x.toarray() if sp.issparse(x) else np.asarray(x)
        self.residuals = dense - self.rep.inverse_transform(self.z.numpy(), clip=False)
        labels = adata.obs[perturbation_key].astype(str)
        self.parts = sorted({p for v in labels.unique() for p in self.builder.parts(v)})
        self.contexts = {k: sorted(adata.obs[k].astype(str).unique()) for k in self.context_keys}
        self.cond = torch.from_numpy(
            np.stack(
                [
                    self._encode(v, dict(zip(self.context_keys, row, strict=True)))
                    for v, row in zip(labels, self._context_rows(adata.obs), strict=True)
                ]
            )
        )
        self.ctx_index = self._context_rows(adata.obs)
        self.is_control = (labels == control_value).to_numpy()
        torch.manual_seed(seed)
        self.field = VelocityField(n_components, self.cond.shape[1], hidden=hidden, n_layers=n_layers)
        self.history: list[float] = []

    def _context_rows(self, obs: pd.DataFrame) -> list[tuple[str, ...]]:
        return (
            [tuple(r) for r in obs[self.context_keys].astype(str).to_numpy()] if self.context_keys else [()] * len(obs)
        )

    def _encode(self, perturbation: str, context: Mapping[str, str]) -> np.ndarray:
        vec = np.zeros(len(self.parts) + sum(len(v) for v in self.contexts.values()), dtype=np.float32)
        for part in self.builder.parts(perturbation):
            if part not in self.parts:
                raise ValueError(f"perturbation part {part!r} was never seen in training; known: {self.parts[:20]}")
            vec[self.parts.index(part)] = 1.0
        offset = len(self.parts)
        for key in self.context_keys:
            values = self.contexts[key]
            if str(context[key]) not in values:
                raise ValueError(f"context {key}={context[key]!r} was never seen in training; known: {values}")
            vec[offset + values.index(str(context[key]))] = 1.0
            offset += len(values)
        return vec

    def _control_rows(self, context: tuple[str, ...]) -> np.ndarray:
        rows = np.flatnonzero(self.is_control & np.array([c == context for c in self.ctx_index]))
        if not len(rows):
            raise ValueError(f"no control cells in context {context}.")
        return rows

    def train(
        self,
        *,
        max_seconds: float | None = None,
        max_steps: int = 5000,
        batch_size: int = 256,
        lr: float = 1e-3,
        seed: int = 0,
    ) -> None:
        """Fit the velocity field for a number of steps or a wall-clock budget.

        Parameters
        ----------
        max_seconds
            Stop after this many seconds (equal-budget comparisons).
        max_steps
            Stop after this many steps.
        batch_size
            Cells per step.
        lr
            Adam learning rate.
        seed
            Random seed.
        """
        rng = np.random.default_rng(seed)
        gen = torch.Generator().manual_seed(seed)
        control_by_ctx = {c: self._control_rows(c) for c in set(self.ctx_index)} if self.source == "control" else {}
        opt = torch.optim.Adam(self.field.parameters(), lr=lr)
        start = time.perf_counter()
        self.field.train()
        for _ in range(max_steps):
            if max_seconds is not None and time.perf_counter() - start > max_seconds:
                break
            rows = rng.integers(0, len(self.z), batch_size)
            x1, cond = self.z[rows], self.cond[rows]
            if self.source == "control":
                src = np.array([rng.choice(control_by_ctx[self.ctx_index[r]]) for r in rows])
                x0 = self.z[src]
            else:
                x0 = torch.randn(x1.shape, generator=gen)
            loss = cfm_loss(
                self.field, x0, x1, cond, ot_pairing=self.ot_pairing and self.source == "noise", generator=gen
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            self.history.append(loss.item())
        self.field.eval()

    def predict_perturbation(
        self,
        perturbations: str | Sequence[str],
        context: Mapping[str, str] | None = None,
        n_cells: int = 500,
        seed: int = 0,
    ) -> AnnData:
        """Generate cells by integrating the conditional velocity field.

        Parameters
        ----------
        perturbations
            Perturbations (combinations of seen parts allowed).
        context
            Context values.
        n_cells
            Cells per perturbation.
        seed
            Random seed.

        Returns
        -------
        AnnData with the training genes, ``obs[perturbation_key]`` and context columns.
        """
        perts = [perturbations] if isinstance(perturbations, str) else list(perturbations)
        context = {k: str(v) for k, v in (context or {}).items()}
        ctx_tuple = tuple(context[k] for k in self.context_keys)
        rng = np.random.default_rng(seed)
        gen = torch.Generator().manual_seed(seed)
        xs, obs = [], []
        for pert in perts:
            cond = torch.from_numpy(self._encode(pert, context)).expand(n_cells, -1)
            if self.source == "control":
                src = rng.choice(self._control_rows(ctx_tuple), n_cells)
                z = cfm_sample(self.field, self.z[src], cond).numpy()
                x = self.rep.inverse_transform(z, clip=False) + self.residuals[src]
            else:
                z = cfm_sample(self.field, torch.randn(n_cells, self.z.shape[1], generator=gen), cond).numpy()
                x = self.rep.inverse_transform(z, clip=False)
            xs.append(np.clip(x, 0, None).astype(np.float32))
            obs += [{self.key: pert, **context, "generated": True}] * n_cells
        frame = pd.DataFrame(obs, index=[f"cfm-{i}" for i in range(len(obs))])
        return AnnData(X=np.concatenate(xs), obs=frame, var=pd.DataFrame(index=self.adata.var_names.copy()))
