"""Shared helpers of the plotting functions: figure handling in scanpy's conventions, colours, checks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

SOURCE_PALETTE = {"real": "#8c8c8c", "generated": "#d62728"}
SOURCE_MARKERS = {"real": "o", "generated": "^"}
Palette = str | Sequence[str] | Mapping[str, str] | None


def new_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    """Return ``ax`` and its figure, or a new figure with one axes."""
    if ax is not None:
        if not isinstance(ax, Axes):
            raise TypeError(f"ax must be a matplotlib Axes, got {type(ax).__name__}.")
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    return fig, ax


def finish(
    fig: Figure,
    axes: Axes | Sequence[Axes],
    *,
    show: bool | None,
    return_fig: bool,
    save: str | Path | None = None,
    dpi: float = 150,
) -> Figure | Axes | list[Axes] | None:
    """Save, show and return as scanpy does.

    ``show=None`` follows matplotlib's interactive mode (on in Jupyter, off in scripts). Returns the
    Figure when ``return_fig``, the Axes when not shown, else None.
    """
    if save is not None:
        fig.savefig(save, dpi=dpi, bbox_inches="tight")
    if show is None:
        show = plt.isinteractive()
    if show:
        plt.show()
    if return_fig:
        return fig
    if not show:
        return axes
    return None


def category_colors(categories: Sequence[str], palette: Palette = None) -> dict[str, str]:
    """Colours for categories: a dict, a list of colours, a colormap name, or scanpy's default palettes."""
    categories = [str(c) for c in categories]
    if isinstance(palette, Mapping):
        missing = [c for c in categories if c not in palette]
        if missing:
            raise KeyError(f"palette has no colour for {missing}.")
        return {c: to_hex(palette[c]) for c in categories}
    if isinstance(palette, str):
        cmap = colormaps[palette]
        n = getattr(cmap, "N", 256)
        if n <= 32:  # a qualitative map: take its colours in order
            return {c: to_hex(cmap(i % n)) for i, c in enumerate(categories)}
        return {
            c: to_hex(cmap(v)) for c, v in zip(categories, np.linspace(0, 1, max(len(categories), 2)), strict=False)
        }
    if palette is not None:
        colours = list(palette)
        if not colours:
            raise ValueError("palette is empty.")
        return {c: to_hex(colours[i % len(colours)]) for i, c in enumerate(categories)}
    from scanpy.plotting import palettes

    if len(categories) <= 10:
        base = [to_hex(colormaps["tab10"](i)) for i in range(10)]
    elif len(categories) <= 20:
        base = list(palettes.default_20)
    elif len(categories) <= 28:
        base = list(palettes.default_28)
    else:
        base = list(palettes.default_102)
    return {c: base[i % len(base)] for i, c in enumerate(categories)}


def ordered_categories(values: pd.Series) -> list[str]:
    """Categories in their categorical order (only those present), else sorted."""
    present = set(values.astype(str))
    if isinstance(values.dtype, pd.CategoricalDtype):
        return [str(c) for c in values.cat.categories if str(c) in present]
    return sorted(present)


def check_obs_key(adata: AnnData, key: str, name: str = "adata") -> None:
    """Raise a KeyError naming the missing obs column."""
    if not isinstance(adata, AnnData):
        raise TypeError(f"{name} must be an AnnData, got {type(adata).__name__}.")
    if key not in adata.obs:
        raise KeyError(f"{name}.obs has no column {key!r}; columns: {list(adata.obs.columns)}.")


def check_same_genes(pred: AnnData, real: AnnData) -> None:
    """Raise if ``pred`` and ``real`` do not share genes in the same order."""
    if not pred.var_names.equals(real.var_names):
        raise ValueError(
            f"pred and real must have the same genes in the same order (pred {pred.shape}, real {real.shape}); "
            "subset one to the other, e.g. pred[:, real.var_names]."
        )


def cells_of(adata: AnnData, key: str, value: str, name: str) -> AnnData:
    """Select the cells of one condition, or raise a KeyError listing the available ones."""
    labels = adata.obs[key].astype(str).to_numpy()
    mask = labels == str(value)
    if not mask.any():
        available = ordered_categories(adata.obs[key])
        raise KeyError(f"{name}.obs[{key!r}] has no cells of {value!r}; available: {available[:30]}.")
    return adata[mask]


def as_list(value: Any) -> list:
    """Wrap a scalar (or None) into a list."""
    if value is None:
        return [None]
    if isinstance(value, str) or not isinstance(value, Sequence):
        return [value]
    return list(value)
