"""The most changed genes of each condition, measured next to predicted."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from calmflow_sc.pl._utils import cells_of, check_obs_key, check_same_genes, finish, new_axes, ordered_categories
from calmflow_sc.tl._expression import mean_expression as _gene_means
from calmflow_sc.tl._expression import top_degs


def response_genes(
    pred: AnnData,
    real: AnnData,
    *,
    perturbation_key: str,
    conditions: Sequence[str] | None = None,
    control_value: str = "control",
    control: AnnData | None = None,
    n_genes: int = 10,
    gene_selection: str = "delta",
    kind: str = "heatmap",
    cmap: str = "RdBu_r",
    vmax: float | None = None,
    title: str | None = None,
    figsize: tuple[float, float] | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    save: str | Path | None = None,
) -> Figure | Axes | None:
    """Mean change from control of each condition's top genes, measured and predicted side by side.

    Rows come in pairs per condition (measured, then predicted); columns are the union of every
    condition's ``n_genes`` top genes, in order of appearance. Colour is the change of the mean
    (log-normalised) expression from the control mean, on a symmetric diverging scale.

    Parameters
    ----------
    pred
        Generated cells with ``obs[perturbation_key]``.
    real
        Measured cells (same genes, same order), including control cells unless ``control`` is given.
    perturbation_key
        obs column naming the condition.
    conditions
        Conditions to show; default those present in both (control excluded).
    control_value
        Label of the control cells in ``real``.
    control
        Control cells to use instead of ``real``'s.
    n_genes
        Top genes per condition.
    gene_selection
        ``"delta"``: largest absolute change of the measured mean from control (what the colour
        shows); ``"degs"``: :func:`calmflow_sc.tl.top_degs` (Wilcoxon scores).
    kind
        ``"heatmap"``; or ``"dotplot"``, where colour is the change and dot size the fraction of
        cells expressing the gene (> 0), as in ``sc.pl.dotplot``.
    cmap
        Diverging colormap.
    vmax
        Colour limit (symmetric); default the largest absolute change shown.
    title
        Axes title.
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
    if kind not in ("heatmap", "dotplot"):
        raise ValueError(f"kind must be 'heatmap' or 'dotplot', got {kind!r}.")
    if gene_selection not in ("delta", "degs"):
        raise ValueError(f"gene_selection must be 'delta' or 'degs', got {gene_selection!r}.")
    if int(n_genes) != n_genes or n_genes < 1:
        raise ValueError(f"n_genes must be a positive integer, got {n_genes!r}.")
    if control is None:
        control = cells_of(real, perturbation_key, control_value, "real")
    elif not control.var_names.equals(real.var_names):
        raise ValueError("control must have the same genes in the same order as real.")
    if conditions is None:
        in_real = set(real.obs[perturbation_key].astype(str))
        conditions = [c for c in ordered_categories(pred.obs[perturbation_key]) if c in in_real and c != control_value]
        if not conditions:
            raise ValueError(f"pred and real share no condition in obs[{perturbation_key!r}] besides control.")
    conditions = [conditions] if isinstance(conditions, str) else [str(c) for c in conditions]

    control_mean = _gene_means(control)
    cells = {
        c: (cells_of(real, perturbation_key, c, "real"), cells_of(pred, perturbation_key, c, "pred"))
        for c in conditions
    }
    genes: list[str] = []
    for r, _ in cells.values():
        if gene_selection == "delta":
            delta = _gene_means(r) - control_mean
            top = [real.var_names[i] for i in np.argsort(-np.abs(delta), kind="stable")[:n_genes]]
        else:
            top = top_degs(r, control, n_genes)
        genes += [g for g in top if g not in genes]
    idx = real.var_names.get_indexer(genes)
    rows, deltas, fractions = [], [], []
    for c, (r, p) in cells.items():
        for label, data in (("measured", r), ("predicted", p)):
            rows.append(f"{c} · {label}")
            deltas.append(_gene_means(data)[idx] - control_mean[idx])
            fractions.append(_fraction_expressing(data, idx))
    deltas, fractions = np.array(deltas), np.array(fractions)
    limit = vmax if vmax is not None else float(np.nanmax(np.abs(deltas))) or 1.0

    fig, ax = new_axes(ax, figsize or (0.32 * len(genes) + 3.2, 0.34 * len(rows) + 1.8))
    if kind == "heatmap":
        image = ax.imshow(deltas, cmap=cmap, vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest")
    else:
        yy, xx = np.mgrid[0 : len(rows), 0 : len(genes)]
        image = ax.scatter(
            xx.ravel(),
            yy.ravel(),
            c=deltas.ravel(),
            s=8 + 110 * fractions.ravel(),
            cmap=cmap,
            vmin=-limit,
            vmax=limit,
            edgecolors="0.3",
            linewidths=0.3,
        )
        ax.set_xlim(-0.6, len(genes) - 0.4)
        ax.set_ylim(len(rows) - 0.5, -0.5)
        for frac in (0.25, 0.5, 1.0):
            ax.scatter([], [], s=8 + 110 * frac, color="0.6", label=f"{frac:.0%}")
        size_legend = ax.legend(
            title="cells > 0",
            frameon=False,
            fontsize=7,
            title_fontsize=7,
            loc="lower left",
            bbox_to_anchor=(1.02, 0.0),
            borderaxespad=0.0,
            labelspacing=0.8,
        )
        size_legend.set_in_layout(False)  # sits under the (shortened) colour bar
    for boundary in range(2, len(rows), 2):
        ax.axhline(boundary - 0.5, color="black", lw=1.0)
    ax.set_xticks(range(len(genes)), genes, rotation=90, fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.tick_params(length=0)
    ax.set_xlabel("gene")
    fig.colorbar(
        image,
        ax=ax,
        label="mean change from control",
        shrink=0.8 if kind == "heatmap" else 0.55,
        pad=0.02,
        anchor=(0.0, 1.0),
    )
    ax.set_title(title if title is not None else f"top {n_genes} changed genes per condition", fontsize=10)
    return finish(fig, ax, show=show, return_fig=return_fig, save=save)


def _fraction_expressing(adata: AnnData, idx: np.ndarray) -> np.ndarray:
    x = adata.X[:, idx]
    x = x.toarray() if sp.issparse(x) else np.asarray(x)
    return (x > 0).mean(axis=0)
