"""Measured and generated cells in one embedding."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from calmflow_sc.pl._utils import (
    SOURCE_MARKERS,
    SOURCE_PALETTE,
    Palette,
    as_list,
    category_colors,
    finish,
    ordered_categories,
)

_BASIS_NAMES = {"umap": "UMAP", "pca": "PC", "tsne": "tSNE", "calmflow": "CaLMFlow PC"}


def embedding(
    adata: AnnData,
    *,
    basis: str = "X_joint_umap",
    color: str | Sequence[str] | None = None,
    components: tuple[int, int] = (0, 1),
    marker_by: str | None = "source",
    palette: Palette = None,
    size: float | None = None,
    alpha: float = 0.8,
    cmap: str = "viridis",
    title: str | Sequence[str] | None = None,
    legend_loc: str | None = "right margin",
    shuffle: bool = True,
    random_state: int = 0,
    ncols: int = 3,
    figsize: tuple[float, float] | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    save: str | Path | None = None,
) -> Figure | Axes | list[Axes] | None:
    """Scatter measured and generated cells in one embedding, one panel per ``color``.

    Typical input is the result of :func:`calmflow_sc.tl.embed_joint`; any AnnData with the
    embedding in ``obsm`` works.

    Parameters
    ----------
    adata
        Cells with ``obsm[basis]``.
    basis
        obsm key of the embedding (``"X_joint_umap"``, ``"X_joint_pca"``, ``"X_umap"``, ...).
    color
        obs column(s) or gene(s) to colour by, one panel each. Categorical columns get a legend,
        numeric ones and genes a colour bar. Default: the perturbation column recorded by
        ``tl.embed_joint`` and ``"source"`` (two panels), else ``"source"``.
    components
        Two 0-based columns of the embedding to draw.
    marker_by
        Categorical obs column drawn with different markers (default ``"source"``: real cells as
        circles, generated cells as triangles); None for circles only.
    palette
        Colours of categories: a dict category -> colour, a list, or a colormap name. The
        ``"source"`` panel uses grey (real) and red (generated) unless a dict is given.
    size
        Marker area; default scales with the number of cells as in scanpy.
    alpha
        Marker opacity.
    cmap
        Colormap of numeric values.
    title
        Panel title(s); default the colour key.
    legend_loc
        ``"right margin"``, ``"best"`` (inside) or None.
    shuffle
        Draw the cells of each marker group in a random order (seeded by ``random_state``), so
        that no category systematically hides another where cells overlap. Measured cells are
        always drawn first, generated ones on top.
    random_state
        Seed of the drawing order.
    ncols
        Panels per row.
    figsize
        Figure size (default 4.2 x 3.6 inches per panel, wider with a legend).
    ax
        Draw into this axes (only with a single ``color``).
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
    if not isinstance(adata, AnnData):
        raise TypeError(f"adata must be an AnnData, got {type(adata).__name__}.")
    if basis not in adata.obsm:
        raise KeyError(
            f"adata.obsm has no {basis!r}; available: {list(adata.obsm.keys())}. Run calmflow_sc.tl.embed_joint first."
        )
    coords = np.asarray(adata.obsm[basis])
    if len(components) != 2 or coords.ndim != 2 or max(components) >= coords.shape[1] or min(components) < 0:
        raise ValueError(f"components {components} out of range for obsm[{basis!r}] of shape {coords.shape}.")
    if color is None:
        key = adata.uns.get("embed_joint", {}).get("perturbation_key")
        color = [key, "source"] if key in adata.obs and "source" in adata.obs else "source"
        if color == "source" and "source" not in adata.obs:
            color = None
    colors = as_list(color)
    for c in colors:
        if c is not None and c not in adata.obs and c not in adata.var_names:
            raise KeyError(f"color {c!r} is neither an obs column nor a gene; obs columns: {list(adata.obs.columns)}.")
    if marker_by is not None and marker_by not in adata.obs:
        if marker_by == "source":
            marker_by = None  # plain AnnData without a source column
        else:
            raise KeyError(f"marker_by {marker_by!r} is not an obs column.")
    titles = as_list(title) if title is not None else [None] * len(colors)
    if len(titles) != len(colors):
        raise ValueError(f"got {len(titles)} titles for {len(colors)} colour panels.")
    if ax is not None and len(colors) > 1:
        raise ValueError(f"ax= draws one panel, but {len(colors)} colours were asked for; pass one color.")

    n_panels = len(colors)
    if ax is None:
        n_cols = min(ncols, n_panels)
        n_rows = -(-n_panels // n_cols)
        width = 4.2 + (1.6 if legend_loc == "right margin" else 0)
        fig, axs = plt.subplots(
            n_rows, n_cols, figsize=figsize or (width * n_cols, 3.6 * n_rows), squeeze=False, layout="constrained"
        )
        axes = list(axs.ravel())
        for extra in axes[n_panels:]:
            extra.remove()
        axes = axes[:n_panels]
    else:
        fig, axes = ax.figure, [ax]

    size = size if size is not None else float(np.clip(15000 / max(adata.n_obs, 1), 2, 30))
    xy = coords[:, list(components)]
    markers = (
        pd.Series(adata.obs[marker_by].astype(str).to_numpy())
        if marker_by is not None
        else pd.Series(["all"] * adata.n_obs)
    )
    marker_groups = ordered_categories(adata.obs[marker_by]) if marker_by is not None else ["all"]
    marker_shapes = {g: SOURCE_MARKERS.get(g, m) for g, m in zip(marker_groups, "o^sDvP*X", strict=False)}
    prefix = basis.removeprefix("X_").removeprefix("joint_")
    axis_name = _BASIS_NAMES.get(prefix, prefix)

    for panel, (key, panel_title) in enumerate(zip(colors, titles, strict=True)):
        a = axes[panel]
        legend_handles: list = []
        if key is None:
            values, colour_of = None, None
        elif key in adata.obs and (
            not pd.api.types.is_numeric_dtype(adata.obs[key]) or pd.api.types.is_bool_dtype(adata.obs[key])
        ):
            cats = ordered_categories(adata.obs[key])
            if key == "source" and not isinstance(palette, dict):
                colour_of = {c: SOURCE_PALETTE.get(c, "#1f77b4") for c in cats}
            else:
                colour_of = category_colors(cats, palette)
            values = adata.obs[key].astype(str).to_numpy()
            legend_handles = [
                Line2D([], [], marker="o", ls="", color=colour_of[c], markersize=6, label=c) for c in cats
            ]
        else:
            values = _numeric(adata, key)
            colour_of = None
        mappable = None
        for group in marker_groups:
            idx = np.flatnonzero(markers.to_numpy() == group)
            if idx.size == 0:
                continue
            if shuffle:
                idx = np.random.default_rng(random_state).permutation(idx)
            kwargs = {"s": size, "alpha": alpha, "marker": marker_shapes[group], "linewidths": 0, "rasterized": True}
            if values is None:
                a.scatter(xy[idx, 0], xy[idx, 1], c="#1f77b4", label=group, **kwargs)
            elif colour_of is not None:
                a.scatter(xy[idx, 0], xy[idx, 1], c=[colour_of[v] for v in values[idx]], label=group, **kwargs)
            else:
                vmin, vmax = np.nanmin(values), np.nanmax(values)
                mappable = a.scatter(
                    xy[idx, 0], xy[idx, 1], c=values[idx], cmap=cmap, vmin=vmin, vmax=vmax, label=group, **kwargs
                )
        if mappable is not None:
            fig.colorbar(mappable, ax=a, shrink=0.7, pad=0.02, label=str(key))
        if marker_by is not None and len(marker_groups) > 1 and key != marker_by:
            legend_handles += [Line2D([], [], ls="", label="")] if legend_handles else []
            legend_handles += [
                Line2D([], [], marker=marker_shapes[g], ls="", color="0.3", markersize=6, label=g)
                for g in marker_groups
            ]
        if legend_handles and legend_loc is not None:
            if legend_loc == "right margin":
                a.legend(
                    handles=legend_handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=8
                )
            else:
                a.legend(handles=legend_handles, loc=legend_loc, frameon=False, fontsize=8)
        a.set_title(panel_title if panel_title is not None else (key if key is not None else basis))
        a.set_xlabel(f"{axis_name}{components[0] + 1}")
        a.set_ylabel(f"{axis_name}{components[1] + 1}")
        a.set_xticks([])
        a.set_yticks([])
    return finish(
        fig, axes[0] if ax is not None or n_panels == 1 else axes, show=show, return_fig=return_fig, save=save
    )


def _numeric(adata: AnnData, key: str) -> np.ndarray:
    if key in adata.obs:
        return adata.obs[key].to_numpy(dtype=float)
    column = adata[:, key].X
    return np.asarray(column.toarray() if sp.issparse(column) else column, dtype=float).ravel()
