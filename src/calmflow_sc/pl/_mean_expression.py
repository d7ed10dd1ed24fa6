"""Measured against predicted per-gene mean expression of one condition."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from calmflow_sc.pl._labels import label_points
from calmflow_sc.pl._utils import cells_of, check_obs_key, check_same_genes, finish, new_axes
from calmflow_sc.tl._expression import mean_expression as _gene_means
from calmflow_sc.tl._expression import r2_mean, top_degs


def mean_expression(
    pred: AnnData,
    real: AnnData,
    *,
    perturbation_key: str,
    condition: str,
    control_value: str = "control",
    control: AnnData | None = None,
    n_top_degs: int = 20,
    n_labels: int = 10,
    show_control: bool = False,
    color: str = "#1f77b4",
    deg_color: str = "#d62728",
    size: float = 10,
    title: str | None = None,
    figsize: tuple[float, float] = (4.4, 4.2),
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    save: str | Path | None = None,
) -> Figure | Axes | None:
    """Scatter measured (x) against predicted (y) per-gene mean expression for one condition.

    Each point is a gene. The condition's top differentially expressed genes against control
    (:func:`calmflow_sc.tl.top_degs`, Wilcoxon on the measured cells) are highlighted and the
    ``n_labels`` strongest are labelled. The title gives R^2 (:func:`calmflow_sc.tl.r2_mean`,
    measured means as truth) over all genes and over the top DEGs.

    Labels are placed by a small built-in routine (each label starts off the diagonal, on the side
    away from it, and overlapping labels are pushed apart), so no extra dependency such as
    ``adjustText`` is needed.

    Parameters
    ----------
    pred
        Generated cells with ``obs[perturbation_key]``.
    real
        Measured cells (same genes, same order), including control cells unless ``control`` is given.
    perturbation_key
        obs column naming the condition.
    condition
        The condition to show.
    control_value
        Label of the control cells in ``real``.
    control
        Control cells to use instead of ``real``'s.
    n_top_degs
        Number of top DEGs to highlight (0: none; then no control cells are needed).
    n_labels
        How many of them (the strongest first) to label.
    show_control
        Also draw the control mean of every gene (x: measured condition mean, y: control mean) in
        light grey: genes a model should move lie off the diagonal there.
    color, deg_color
        Colours of all genes and of the top DEGs.
    size
        Marker area.
    title
        Title; default the condition and the R^2 values.
    figsize
        Size of a new figure.
    ax
        Draw into this axes.
    show
        Show the figure; None follows matplotlib's interactive mode.
    return_fig
        Return the Figure.
    save
        Write the figure to this path.

    Returns
    -------
    The Figure if ``return_fig``; the Axes if not shown; else None.
    """
    check_obs_key(pred, perturbation_key, "pred")
    check_obs_key(real, perturbation_key, "real")
    check_same_genes(pred, real)
    if n_labels > n_top_degs:
        raise ValueError(f"n_labels ({n_labels}) cannot exceed n_top_degs ({n_top_degs}).")
    p = cells_of(pred, perturbation_key, condition, "pred")
    r = cells_of(real, perturbation_key, condition, "real")
    if control is None and (n_top_degs > 0 or show_control):
        control = cells_of(real, perturbation_key, control_value, "real")
    if control is not None and not control.var_names.equals(real.var_names):
        raise ValueError("control must have the same genes in the same order as real.")

    measured, predicted = _gene_means(r), _gene_means(p)
    scores = r2_mean(p, r)
    degs = top_degs(r, control, n_top_degs) if n_top_degs > 0 else []
    deg_idx = real.var_names.get_indexer(degs)
    rest = np.setdiff1d(np.arange(real.n_vars), deg_idx)

    fig, ax = new_axes(ax, figsize)
    if show_control:
        ax.scatter(measured, _gene_means(control), s=size * 0.6, color="0.8", linewidths=0, label="control mean")
    ax.scatter(measured[rest], predicted[rest], s=size, color=color, alpha=0.6, linewidths=0, label="genes")
    deg_label = None
    if degs:
        deg_scores = r2_mean(p, r, genes=degs)
        deg_label = f"top {len(degs)} DEGs (R² = {deg_scores['r2']:.3f})"
        ax.scatter(
            measured[deg_idx],
            predicted[deg_idx],
            s=size * 2,
            color=deg_color,
            linewidths=0.4,
            edgecolors="white",
            label=deg_label,
            zorder=3,
        )
    low = float(min(measured.min(), predicted.min()))
    high = float(max(measured.max(), predicted.max()))
    pad = 0.05 * (high - low if high > low else 1.0)
    lim = (low - pad, high + pad)
    ax.plot(lim, lim, color="0.5", lw=0.8, ls="--", zorder=0, label="y = x")
    ax.set_xlim(lim)
    ax.set_ylim(lim)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel(f"measured mean expression ({r.n_obs} cells)")
    ax.set_ylabel(f"predicted mean expression ({p.n_obs} cells)")
    r2_text = f"R² = {scores['r2']:.3f} (all {real.n_vars} genes)"
    ax.set_title(title if title is not None else f"{condition}\n{r2_text}", fontsize=10)
    if n_labels > 0 and degs:
        lab = deg_idx[:n_labels]
        side = np.where(predicted[lab] >= measured[lab], 1.0, -1.0)
        label_points(ax, measured[lab], predicted[lab], [real.var_names[i] for i in lab], side=side)
    ax.legend(loc="best", frameon=False, fontsize=7, markerscale=1.2)  # placed away from points and labels
    return finish(fig, ax, show=show, return_fig=return_fig, save=save)
