"""Evaluation tables of several models as heatmaps or grouped bars."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from calmflow_sc.pl._utils import Palette, as_list, category_colors, finish
from calmflow_sc.tl._evaluate import METRICS

LOWER_IS_BETTER = {"energy_distance", "mmd", "wasserstein"}
_REQUIRED = ("model", "condition", "metric", "value")


def metrics(
    results: pd.DataFrame,
    *,
    metric: str | Sequence[str] | None = None,
    kind: str = "heatmap",
    models: Sequence[str] | None = None,
    conditions: Sequence[str] | None = None,
    summary: str = "mean",
    palette: Palette = None,
    cmap: str = "viridis",
    annotate: bool = True,
    fmt: str = ".3f",
    title: str | Sequence[str] | None = None,
    ncols: int = 4,
    figsize: tuple[float, float] | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    save: str | Path | None = None,
) -> Figure | Axes | list[Axes] | None:
    """Per-condition scores of several models, one panel per metric.

    Parameters
    ----------
    results
        Tidy table from :func:`calmflow_sc.tl.evaluate` (columns ``model``, ``condition``,
        ``metric``, ``value``); several models' tables concatenated.
    metric
        Metric(s) to show; default all in ``results``.
    kind
        ``"heatmap"``: conditions as rows, models as columns, values written in the cells, with a
        last row for the ``summary`` across conditions; colours run so that the better end
        (bright) is the same for every metric (reversed for distances, where lower is better).
        ``"bar"``: grouped bars, models side by side for each condition and for the summary.
    models, conditions
        Subset and order; default all, in order of appearance.
    summary
        ``"mean"`` or ``"median"`` across conditions (shown as the last row / group).
    palette
        Model colours for ``kind="bar"``.
    cmap
        Colormap for ``kind="heatmap"``.
    annotate
        Write values into the heatmap cells.
    fmt
        Number format of annotations.
    title
        Panel title(s); default the metric and whether lower or higher is better.
    ncols
        Panels per row.
    figsize
        Figure size.
    ax
        Draw into this axes (only with a single metric).
    show
        Show the figure; None follows matplotlib's interactive mode.
    return_fig
        Return the Figure.
    save
        Write the figure to this path.

    Returns
    -------
    The Figure if ``return_fig``; the Axes (a list for several panels) if not shown; else None.
    """
    if not isinstance(results, pd.DataFrame):
        raise TypeError(f"results must be a DataFrame from calmflow_sc.tl.evaluate, got {type(results).__name__}.")
    missing = [c for c in _REQUIRED if c not in results.columns]
    if missing:
        raise KeyError(f"results lacks columns {missing}; expected the output of calmflow_sc.tl.evaluate.")
    if kind not in ("heatmap", "bar"):
        raise ValueError(f"kind must be 'heatmap' or 'bar', got {kind!r}.")
    if summary not in ("mean", "median"):
        raise ValueError(f"summary must be 'mean' or 'median', got {summary!r}.")
    table = results.copy()
    table["model"] = table["model"].fillna("model").astype(str)
    table["condition"] = table["condition"].astype(str)
    available = list(dict.fromkeys(table["metric"].astype(str)))
    metric_list = available if metric is None else [str(m) for m in as_list(metric)]
    unknown = [m for m in metric_list if m not in available]
    if unknown:
        raise KeyError(f"metrics {unknown} not in results; available: {available}.")
    model_list = list(dict.fromkeys(table["model"])) if models is None else [str(m) for m in models]
    unknown = [m for m in model_list if m not in set(table["model"])]
    if unknown:
        raise KeyError(f"models {unknown} not in results; available: {sorted(set(table['model']))}.")
    condition_list = list(dict.fromkeys(table["condition"])) if conditions is None else [str(c) for c in conditions]
    unknown = [c for c in condition_list if c not in set(table["condition"])]
    if unknown:
        raise KeyError(f"conditions {unknown} not in results; available: {sorted(set(table['condition']))}.")
    titles = as_list(title) if title is not None else [None] * len(metric_list)
    if len(titles) != len(metric_list):
        raise ValueError(f"got {len(titles)} titles for {len(metric_list)} metrics.")
    if ax is not None and len(metric_list) > 1:
        raise ValueError(f"ax= draws one panel, but {len(metric_list)} metrics were asked for; pass one metric.")

    n = len(metric_list)
    if ax is None:
        n_cols = min(ncols, n)
        n_rows = -(-n // n_cols)
        if kind == "heatmap":
            size = (1.1 * len(model_list) + 2.6, 0.38 * (len(condition_list) + 1) + 1.4)
        else:
            size = (0.3 * (len(condition_list) + 1) * len(model_list) + 1.8, 3.4)
        fig, axs = plt.subplots(
            n_rows,
            n_cols,
            figsize=figsize or (size[0] * n_cols, size[1] * n_rows),
            squeeze=False,
            layout="constrained",
        )
        axes = list(axs.ravel())
        for extra in axes[n:]:
            extra.remove()
        axes = axes[:n]
    else:
        fig, axes = ax.figure, [ax]

    colours = category_colors(model_list, palette)
    for a, name, panel_title in zip(axes, metric_list, titles, strict=True):
        sub = table[table["metric"].astype(str) == name]
        grid = sub.pivot_table(index="condition", columns="model", values="value", aggfunc="mean", sort=False)
        grid = grid.reindex(index=condition_list, columns=model_list)
        agg = grid.mean(axis=0) if summary == "mean" else grid.median(axis=0)
        lower = name in LOWER_IS_BETTER or "lower is better" in METRICS.get(name, "")
        direction = "lower is better" if lower else "higher is better"
        if kind == "heatmap":
            _heatmap(fig, a, grid, agg, summary, lower, cmap, annotate, fmt)
        else:
            _bars(a, grid, agg, summary, colours, name)
        a.set_title(panel_title if panel_title is not None else f"{name}\n({direction})", fontsize=9)
    return finish(fig, axes[0] if ax is not None or n == 1 else axes, show=show, return_fig=return_fig, save=save)


def _heatmap(fig, ax, grid: pd.DataFrame, agg: pd.Series, summary: str, lower: bool, cmap, annotate, fmt) -> None:
    values = np.vstack([grid.to_numpy(dtype=float), agg.to_numpy(dtype=float)[None, :]])
    finite = values[np.isfinite(values)]
    vmin, vmax = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    if vmin == vmax:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    colormap = plt.get_cmap(cmap).reversed() if lower else plt.get_cmap(cmap)
    image = ax.imshow(np.ma.masked_invalid(values), cmap=colormap, vmin=vmin, vmax=vmax, aspect="auto")
    rows = [*grid.index.astype(str), summary]
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xticks(range(grid.shape[1]), grid.columns.astype(str), fontsize=8, rotation=30, ha="right")
    ax.axhline(len(rows) - 1.5, color="white", lw=2.5)
    ax.get_yticklabels()[-1].set_fontweight("bold")
    if annotate:
        for (i, j), v in np.ndenumerate(values):
            if np.isfinite(v):
                light = colormap((v - vmin) / (vmax - vmin))
                dark_text = 0.299 * light[0] + 0.587 * light[1] + 0.114 * light[2] > 0.55
                ax.text(
                    j,
                    i,
                    format(v, fmt),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="black" if dark_text else "white",
                    fontweight="bold" if i == len(rows) - 1 else "normal",
                )
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    fig.colorbar(image, ax=ax, shrink=0.8, pad=0.02)


def _bars(ax, grid: pd.DataFrame, agg: pd.Series, summary: str, colours: dict, name: str) -> None:
    groups = [*grid.index.astype(str), summary]
    values = np.vstack([grid.to_numpy(dtype=float), agg.to_numpy(dtype=float)[None, :]])
    n_models = grid.shape[1]
    width = 0.8 / n_models
    x = np.arange(len(groups), dtype=float)
    x[-1] += 0.5  # set the summary apart
    for j, model in enumerate(grid.columns.astype(str)):
        ax.bar(x - 0.4 + width * (j + 0.5), values[:, j], width=width, color=colours[model], label=model)
    ax.axvline(x[-1] - 0.75, color="0.6", lw=0.8, ls=":")
    ax.set_xticks(x, groups, rotation=35, ha="right", fontsize=8)
    ax.get_xticklabels()[-1].set_fontweight("bold")
    ax.axhline(0, color="0.3", lw=0.6)
    ax.set_ylabel(name)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(frameon=False, fontsize=7, loc="best")
