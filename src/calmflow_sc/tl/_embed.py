"""A joint embedding of measured and generated cells."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from anndata import AnnData

logger = logging.getLogger(__name__)

SOURCE_CATEGORIES = ("real", "generated")


def embed_joint(
    pred: AnnData,
    real: AnnData,
    *,
    perturbation_key: str,
    conditions: Sequence[str] | None = None,
    control_value: str | None = None,
    n_comps: int = 50,
    method: Literal["umap", "pca"] = "umap",
    fit_on: Literal["real", "combined"] = "real",
    n_neighbors: int = 15,
    min_dist: float = 0.5,
    random_state: int = 0,
) -> AnnData:
    """Embed measured and generated cells together (PCA, then optionally UMAP).

    Parameters
    ----------
    pred
        Generated cells (e.g. from ``model.predict_perturbation``) with ``obs[perturbation_key]``.
    real
        Measured cells with the same genes in the same order and ``obs[perturbation_key]``.
    perturbation_key
        obs column naming the condition in both.
    conditions
        Conditions to embed. Default: every condition of ``pred``. Each must occur in ``pred`` or
        ``real``; cells of other conditions are left out of both.
    control_value
        If given, the ``real`` cells with this label are included too (as a reference cloud).
    n_comps
        Number of principal components (reduced to ``min(n_cells, n_genes) - 1`` for small data).
    method
        ``"umap"``: PCA, then ``sc.pp.neighbors`` and ``sc.tl.umap`` on the PCA coordinates of all
        cells; ``"pca"``: PCA only.
    fit_on
        ``"real"`` (default): the PCA (``sc.pp.pca``) is fitted on the measured cells only and the
        generated cells are projected onto its axes (centred by the measured mean), so the axes
        describe real biology, a model cannot bend them towards its own artefacts, and embeddings of
        several models' predictions against the same ``real`` share one PCA. ``"combined"``: the PCA
        is fitted on measured and generated cells together.
    n_neighbors, min_dist
        Passed to ``sc.pp.neighbors`` and ``sc.tl.umap``.
    random_state
        Seed of the PCA solver, the neighbour search and UMAP.

    Returns
    -------
    A new AnnData (the inputs are not modified): measured cells first, then generated ones, with
    ``X`` of both, ``obs[perturbation_key]`` (categorical), ``obs['generated']`` (bool),
    ``obs['source']`` (categorical ``"real"``/``"generated"``) and the other obs columns both inputs
    share; ``obsm['X_joint_pca']``, for ``method="umap"`` also ``obsm['X_joint_umap']`` (the
    neighbour graph is kept under ``uns['joint_neighbors']`` / ``obsp['joint_neighbors_*']``);
    ``varm['joint_PCs']`` (loadings) and the parameters in ``uns['embed_joint']``.
    """
    if method not in ("umap", "pca"):
        raise ValueError(f"method must be 'umap' or 'pca', got {method!r}.")
    if fit_on not in ("real", "combined"):
        raise ValueError(f"fit_on must be 'real' or 'combined', got {fit_on!r}.")
    if int(n_comps) != n_comps or n_comps < 1:
        raise ValueError(f"n_comps must be a positive integer, got {n_comps!r}.")
    for name, data in (("pred", pred), ("real", real)):
        if perturbation_key not in data.obs:
            raise KeyError(f"{name}.obs has no column {perturbation_key!r}; columns: {list(data.obs.columns)}.")
    if pred.n_vars != real.n_vars:
        raise ValueError(
            f"pred and real must have the same genes in the same order: pred has shape {pred.shape}, "
            f"real has shape {real.shape}."
        )
    if not pred.var_names.equals(real.var_names):
        differ = np.flatnonzero(pred.var_names.to_numpy() != real.var_names.to_numpy())
        first = differ[:5].tolist()
        raise ValueError(
            f"pred and real must have the same genes in the same order; they differ at {differ.size} positions, "
            f"e.g. {[(i, pred.var_names[i], real.var_names[i]) for i in first]} (index, pred gene, real gene). "
            "Subset one to the other, e.g. pred[:, real.var_names]."
        )

    pred_labels = pred.obs[perturbation_key].astype(str).to_numpy()
    real_labels = real.obs[perturbation_key].astype(str).to_numpy()
    if conditions is None:
        column = pred.obs[perturbation_key]
        present = set(pred_labels)
        ordered = (
            column.cat.categories.astype(str) if isinstance(column.dtype, pd.CategoricalDtype) else sorted(present)
        )
        conditions = [c for c in ordered if c in present]
    else:
        conditions = [str(c) for c in ([conditions] if isinstance(conditions, str) else conditions)]
        unknown = [c for c in conditions if c not in set(pred_labels) and c not in set(real_labels)]
        if unknown:
            raise KeyError(
                f"conditions {unknown} occur in neither pred nor real obs[{perturbation_key!r}]; "
                f"pred has {sorted(set(pred_labels))[:20]}."
            )
    keep_real = np.isin(real_labels, conditions)
    if control_value is not None:
        if control_value not in set(real_labels):
            raise ValueError(f"control_value {control_value!r} does not occur in real.obs[{perturbation_key!r}].")
        keep_real |= real_labels == control_value
    keep_pred = np.isin(pred_labels, conditions)
    n_real, n_pred = int(keep_real.sum()), int(keep_pred.sum())
    if n_pred == 0:
        raise ValueError(f"pred has no cells of the conditions {conditions}.")
    if n_real == 0:
        raise ValueError(f"real has no cells of the conditions {conditions} (and no control cells were requested).")

    x_real, x_pred = _matrix(real, keep_real), _matrix(pred, keep_pred)
    shared = [
        c for c in real.obs.columns if c in pred.obs.columns and c not in (perturbation_key, "generated", "source")
    ]
    obs = pd.concat(
        [
            real.obs.loc[keep_real, shared].reset_index(drop=True),
            pred.obs.loc[keep_pred, shared].reset_index(drop=True),
        ],
        ignore_index=True,
    )
    labels = np.concatenate([real_labels[keep_real], pred_labels[keep_pred]])
    order = list(dict.fromkeys([*conditions, *([control_value] if control_value is not None else [])]))
    obs.insert(0, perturbation_key, pd.Categorical(labels, categories=[c for c in order if c in set(labels)]))
    obs["generated"] = np.r_[np.zeros(n_real, bool), np.ones(n_pred, bool)]
    obs["source"] = pd.Categorical(np.where(obs["generated"], "generated", "real"), categories=list(SOURCE_CATEGORIES))
    obs.index = [f"real-{i}" for i in real.obs_names[keep_real]] + [f"generated-{i}" for i in pred.obs_names[keep_pred]]
    x = (
        sp.vstack([x_real, x_pred]).tocsr()
        if sp.issparse(x_real) or sp.issparse(x_pred)
        else np.vstack([x_real, x_pred])
    )
    joint = AnnData(X=x, obs=obs, var=pd.DataFrame(index=real.var_names.copy()))

    fit_rows = np.arange(n_real) if fit_on == "real" else np.arange(joint.n_obs)
    n_fit = min(len(fit_rows), joint.n_vars) - 1
    if n_fit < 1:
        raise ValueError(f"need at least 2 cells and 2 genes to fit a PCA, got {len(fit_rows)} cells x {joint.n_vars}.")
    if n_comps > n_fit:
        logger.info(
            "n_comps reduced from %d to %d (PCA fitted on %d cells x %d genes)",
            n_comps,
            n_fit,
            len(fit_rows),
            joint.n_vars,
        )
    n_used = min(int(n_comps), n_fit)
    fit = AnnData(X=x[fit_rows], var=pd.DataFrame(index=joint.var_names))
    sc.pp.pca(fit, n_comps=n_used, random_state=random_state, dtype="float64")
    loadings = np.asarray(fit.varm["PCs"])
    mean = np.asarray(x[fit_rows].mean(axis=0)).ravel()
    joint.obsm["X_joint_pca"] = np.asarray(x @ loadings) - mean @ loadings
    joint.varm["joint_PCs"] = loadings
    params = {
        "perturbation_key": perturbation_key,
        "conditions": list(conditions),
        "control_value": control_value,
        "method": method,
        "fit_on": fit_on,
        "n_comps": n_used,
        "variance_ratio": np.asarray(fit.uns["pca"]["variance_ratio"]),
        "random_state": random_state,
        "n_real": n_real,
        "n_generated": n_pred,
    }
    if method == "umap":
        k = min(int(n_neighbors), joint.n_obs - 1)
        sc.pp.neighbors(
            joint, n_neighbors=k, use_rep="X_joint_pca", random_state=random_state, key_added="joint_neighbors"
        )
        sc.tl.umap(
            joint,
            min_dist=min_dist,
            random_state=random_state,
            neighbors_key="joint_neighbors",
            key_added="X_joint_umap",
        )
        params.update(n_neighbors=k, min_dist=min_dist)
        joint.uns.pop("X_joint_umap", None)
    joint.uns["embed_joint"] = params
    return joint


def _matrix(adata: AnnData, rows: np.ndarray):
    x = adata.X[rows] if adata.X is not None else None
    if x is None:
        raise ValueError("AnnData has no X.")
    if sp.issparse(x):
        return sp.csr_matrix(x, dtype=np.float64)
    return np.asarray(x, dtype=np.float64)
