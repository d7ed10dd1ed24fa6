"""Non-learned baselines on AnnData: control unchanged and the additive model."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from calmflow_sc.data.prompts import PromptBuilder
from calmflow_sc.tl._expression import mean_expression

logger = logging.getLogger(__name__)


def _context_mask(adata: AnnData, context: Mapping[str, str] | None) -> np.ndarray:
    mask = np.ones(adata.n_obs, dtype=bool)
    for key, value in (context or {}).items():
        if key not in adata.obs:
            raise KeyError(f"context key {key!r} is not a column of adata.obs.")
        mask &= (adata.obs[key].astype(str) == str(value)).to_numpy()
    return mask


def _dense(x) -> np.ndarray:
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def _controls(adata, perturbation_key, control_value, context, n_cells, rng):
    labels = adata.obs[perturbation_key].astype(str)
    mask = _context_mask(adata, context) & (labels == control_value).to_numpy()
    if not mask.any():
        raise ValueError(f"no control cells ({control_value!r}) in context {dict(context or {})}.")
    rows = np.flatnonzero(mask)
    chosen = rng.choice(rows, size=n_cells, replace=n_cells > len(rows))
    return chosen, _dense(adata.X[np.sort(rows)]).mean(axis=0)


def _output(x: np.ndarray, perturbation_key, pert, context, source_names, baseline: str) -> AnnData:
    obs = pd.DataFrame(
        {perturbation_key: pert, **{k: str(v) for k, v in (context or {}).items()}},
        index=[f"{baseline}-{i}" for i in range(len(x))],
    )
    obs["generated"] = True
    obs["source_cell"] = source_names
    return AnnData(X=np.clip(x, 0, None).astype(np.float32), obs=obs)


def control_baseline(
    adata: AnnData,
    perturbations: str | Sequence[str],
    *,
    perturbation_key: str,
    control_value: str = "control",
    context: Mapping[str, str] | None = None,
    n_cells: int = 500,
    seed: int = 0,
) -> AnnData:
    """Predict every perturbation as control cells of the same context, unchanged.

    Parameters
    ----------
    adata
        Training cells (log-normalised ``X``).
    perturbations
        Perturbations to "predict".
    perturbation_key
        obs column with the perturbation.
    control_value
        Control label.
    context
        obs values selecting the context (e.g. ``{"cell_type": "k562"}``).
    n_cells
        Cells per perturbation (resampled from controls).
    seed
        Random seed.

    Returns
    -------
    AnnData with the genes of ``adata`` and ``obs[perturbation_key]``.
    """
    rng = np.random.default_rng(seed)
    perts = [perturbations] if isinstance(perturbations, str) else list(perturbations)
    outs = []
    for pert in perts:
        rows, _ = _controls(adata, perturbation_key, control_value, context, n_cells, rng)
        outs.append(
            _output(_dense(adata.X[rows]), perturbation_key, pert, context, adata.obs_names[rows].to_numpy(), "control")
        )
    return _concat(outs, adata)


def additive_baseline(
    adata: AnnData,
    perturbations: str | Sequence[str],
    *,
    perturbation_key: str,
    control_value: str = "control",
    context: Mapping[str, str] | None = None,
    delimiter: str = "+",
    n_cells: int = 500,
    seed: int = 0,
) -> AnnData:
    """Control cells plus the sum of the single perturbations' mean shifts (gene space).

    For ``A+B``: ``x_control + (mean(A) - mean(control)) + (mean(B) - mean(control))``, with
    control cells of the same context resampled and the result clipped at zero. A part with
    no measured single-perturbation cells in the context contributes no shift; such parts are
    listed in ``uns['additive']['missing_singles']`` and logged.

    Parameters
    ----------
    adata
        Training cells (log-normalised ``X``); held-out combinations should not be in it.
    perturbations
        Perturbations to predict.
    perturbation_key
        obs column with the perturbation.
    control_value
        Control label.
    context
        obs values selecting the context.
    delimiter
        Combination delimiter.
    n_cells
        Cells per perturbation.
    seed
        Random seed.

    Returns
    -------
    AnnData with the genes of ``adata``.
    """
    rng = np.random.default_rng(seed)
    builder = PromptBuilder((), control_value, delimiter)
    perts = [perturbations] if isinstance(perturbations, str) else list(perturbations)
    labels = adata.obs[perturbation_key].astype(str).map(lambda v: builder.canonical(v)).to_numpy()
    in_context = _context_mask(adata, context)
    outs, missing = [], {}
    for pert in perts:
        rows, control_mean = _controls(adata, perturbation_key, control_value, context, n_cells, rng)
        shift = np.zeros(adata.n_vars)
        for part in builder.parts(pert):
            single = in_context & (labels == part)
            if not single.any():
                missing.setdefault(pert, []).append(part)
                continue
            shift += _dense(adata.X[np.flatnonzero(single)]).mean(axis=0) - control_mean
        if pert in missing:
            logger.warning("additive baseline: no single-perturbation cells for %s in %s", missing[pert], pert)
        outs.append(
            _output(
                _dense(adata.X[rows]) + shift,
                perturbation_key,
                pert,
                context,
                adata.obs_names[rows].to_numpy(),
                "additive",
            )
        )
    out = _concat(outs, adata)
    out.uns["additive"] = {"missing_singles": missing}
    return out


def mean_baseline(
    adata: AnnData,
    perturbations: str | Sequence[str],
    *,
    perturbation_key: str,
    context: Mapping[str, str] | None = None,
) -> AnnData:
    """Predict a seen condition by its training mean (one cell per condition).

    Parameters
    ----------
    adata
        Training cells.
    perturbations
        Conditions present in ``adata``.
    perturbation_key
        obs column with the perturbation.
    context
        obs values selecting the context.

    Returns
    -------
    AnnData with one mean cell per perturbation.
    """
    perts = [perturbations] if isinstance(perturbations, str) else list(perturbations)
    labels = adata.obs[perturbation_key].astype(str).to_numpy()
    in_context = _context_mask(adata, context)
    outs = []
    for pert in perts:
        rows = np.flatnonzero(in_context & (labels == pert))
        if not len(rows):
            raise ValueError(f"condition {pert!r} has no training cells in context {dict(context or {})}.")
        outs.append(
            _output(mean_expression(adata[rows])[None, :], perturbation_key, pert, context, np.array([""]), "mean")
        )
    return _concat(outs, adata)


def _concat(outs: list[AnnData], adata: AnnData) -> AnnData:
    x = np.concatenate([o.X for o in outs])
    obs = pd.concat([o.obs for o in outs])
    obs.index = pd.Index([f"baseline-{i}" for i in range(len(obs))])
    return AnnData(X=x, obs=obs, var=pd.DataFrame(index=adata.var_names.copy()))
