"""Per-condition evaluation of predicted against measured cells."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from anndata import AnnData

from calmflow_sc.tl._distances import energy_distance, mmd
from calmflow_sc.tl._expression import r2_mean, top_degs

#: Name and definition of every metric that :func:`evaluate` reports.
METRICS = {
    "energy_distance": "energy distance, plain Euclidean, V-statistic, in gene space (lower is better)",
    "mmd": "MMD^2, RBF kernel with widths 0.5/1/2 x pooled median distance, gene space (lower is better)",
    "r2_all": "sklearn R^2 of per-gene means, all genes (higher is better)",
    "pearson_r2_all": "squared Pearson r of per-gene means, all genes (higher is better)",
    "r2_delta_all": "R^2 of per-gene mean changes from control, all genes (higher is better)",
    "r2_top_degs": "R^2 of per-gene means over the condition's top DEGs vs control (higher is better)",
    "r2_delta_top_degs": "R^2 of mean changes from control over the top DEGs (higher is better)",
}


def evaluate(
    pred: AnnData,
    real: AnnData,
    perturbation_key: str,
    control_value: str = "control",
    *,
    conditions: Sequence[str] | None = None,
    control: AnnData | None = None,
    n_top_degs: int = 20,
    model_name: str | None = None,
) -> pd.DataFrame:
    """Compare predicted and measured cells condition by condition.

    Parameters
    ----------
    pred
        Generated cells with ``obs[perturbation_key]``.
    real
        Measured cells (same genes, same order) with ``obs[perturbation_key]``.
    perturbation_key
        obs column naming the condition in both.
    control_value
        Control label in ``real`` (control cells give deltas and DEGs).
    conditions
        Conditions to score; by default those present in both ``pred`` and ``real``.
    control
        Control cells to use (default: ``real`` cells labelled ``control_value``).
    n_top_degs
        Number of top DEGs for the DEG-restricted scores.
    model_name
        Value of the ``model`` column.

    Returns
    -------
    Tidy DataFrame with columns ``model``, ``condition``, ``metric``, ``value``, ``n_pred``,
    ``n_real``; see :data:`METRICS` for the definitions. Summaries: :func:`summarize`.
    """
    for name, data in (("pred", pred), ("real", real)):
        if perturbation_key not in data.obs:
            raise KeyError(f"{name}.obs has no column {perturbation_key!r}.")
    if not pred.var_names.equals(real.var_names):
        raise ValueError("pred and real must have the same genes in the same order.")
    real_labels = real.obs[perturbation_key].astype(str)
    pred_labels = pred.obs[perturbation_key].astype(str)
    if control is None:
        control = real[real_labels == control_value]
    if control.n_obs == 0:
        raise ValueError(f"no control cells ({control_value!r}) to compute deltas and DEGs.")
    if conditions is None:
        conditions = sorted(set(pred_labels) & set(real_labels) - {control_value})
    rows = []
    for condition in conditions:
        p, r = pred[(pred_labels == condition).to_numpy()], real[(real_labels == condition).to_numpy()]
        if p.n_obs == 0 or r.n_obs == 0:
            raise ValueError(f"condition {condition!r} has {p.n_obs} predicted and {r.n_obs} measured cells.")
        degs = top_degs(r, control, n_top_degs)
        all_genes = r2_mean(p, r, control=control)
        deg_scores = r2_mean(p, r, control=control, genes=degs)
        values = {
            "energy_distance": energy_distance(p, r),
            "mmd": mmd(p, r),
            "r2_all": all_genes["r2"],
            "pearson_r2_all": all_genes["pearson_r2"],
            "r2_delta_all": all_genes["r2_delta"],
            "r2_top_degs": deg_scores["r2"],
            "r2_delta_top_degs": deg_scores["r2_delta"],
        }
        for metric, value in values.items():
            rows.append(
                {
                    "model": model_name,
                    "condition": condition,
                    "metric": metric,
                    "value": value,
                    "n_pred": p.n_obs,
                    "n_real": r.n_obs,
                }
            )
    return pd.DataFrame(rows)


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and median of each metric across conditions, per model.

    Parameters
    ----------
    results
        Output of :func:`evaluate` (several models may be concatenated).

    Returns
    -------
    DataFrame indexed by ``(model, metric)`` with ``mean``, ``median`` and ``n_conditions``.
    """
    grouped = results.groupby(["model", "metric"], sort=False)["value"]
    return pd.DataFrame({"mean": grouped.mean(), "median": grouped.median(), "n_conditions": grouped.size()})
