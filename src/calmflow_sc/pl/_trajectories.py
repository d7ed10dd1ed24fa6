"""The flow from source to generated cells, in two dimensions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from calmflow_sc.pl._utils import finish, new_axes


def trajectories(
    trajectories: np.ndarray,
    *,
    dims: tuple[int, int] = (0, 1),
    n_show: int | None = 100,
    real: np.ndarray | None = None,
    projection: np.ndarray | Callable[[np.ndarray], np.ndarray] | None = None,
    random_state: int = 0,
    cmap: str = "viridis",
    linewidth: float = 0.7,
    alpha: float = 0.7,
    size: float = 14,
    real_color: str = "0.75",
    axis_label: str = "PC",
    title: str | None = None,
    figsize: tuple[float, float] = (5.0, 4.2),
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    save: str | Path | None = None,
) -> Figure | Axes | None:
    """Draw trajectories from their source (t = 0) to the generated cell (t = 1) in 2-D.

    Line segments are coloured by time; start points are open circles, end points filled.

    Parameters
    ----------
    trajectories
        Array of shape ``(n_cells, n_time_points, n_components)`` as returned by
        ``model.get_trajectories`` (PCA coordinates); time point ``i`` is ``t = i / (N - 1)``.
    dims
        The two components to draw (0-based), used when ``projection`` is None.
    n_show
        Number of trajectories to draw (a random subset, seeded by ``random_state``); None for all.
    real
        Optional measured target cells, shape ``(n_real, n_components)`` in the same coordinates
        (projected the same way), drawn behind in grey.
    projection
        Instead of ``dims``: a matrix of shape ``(n_components, 2)`` (coordinates are multiplied by
        it) or a function mapping an array ``(n, n_components)`` to ``(n, 2)`` (e.g. the
        ``transform`` of a fitted scikit-learn PCA).
    random_state
        Seed of the subset.
    cmap
        Colormap of time.
    linewidth, alpha, size
        Line width, line opacity, marker area of start and end points.
    real_color
        Colour of the measured cells.
    axis_label
        Axis name prefix (``"PC"`` gives "PC1", "PC2"; "projection" with ``projection``).
    title
        Title; default the number of trajectories and time points.
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
    traj = np.asarray(trajectories, dtype=float)
    if traj.ndim != 3:
        raise ValueError(
            f"trajectories must have shape (n_cells, n_time_points, n_components), got an array of ndim {traj.ndim} "
            f"and shape {traj.shape}."
        )
    n_cells, n_time, n_comp = traj.shape
    if n_cells == 0 or n_time < 2:
        raise ValueError(f"need at least one trajectory with two time points, got shape {traj.shape}.")
    if real is not None:
        real = np.asarray(real, dtype=float)
        if real.ndim != 2 or real.shape[1] != n_comp:
            raise ValueError(
                f"real must have shape (n_real, {n_comp}) like the trajectories' states, got {real.shape}."
            )
    project = _projector(projection, dims, n_comp)
    if n_show is not None and n_show < n_cells:
        if n_show < 1:
            raise ValueError(f"n_show must be positive, got {n_show}.")
        keep = np.sort(np.random.default_rng(random_state).choice(n_cells, size=n_show, replace=False))
        traj = traj[keep]
    xy = project(traj)  # (n, T, 2)
    times = np.linspace(0.0, 1.0, n_time)

    fig, ax = new_axes(ax, figsize)
    if real is not None:
        r = project(real)
        ax.scatter(r[:, 0], r[:, 1], s=size * 0.6, color=real_color, linewidths=0, label="measured cells", zorder=1)
    segments = np.stack([xy[:, :-1], xy[:, 1:]], axis=2).reshape(-1, 2, 2)
    lines = LineCollection(segments, cmap=cmap, linewidths=linewidth, alpha=alpha, zorder=2)
    lines.set_array(np.tile((times[:-1] + times[1:]) / 2, xy.shape[0]))
    lines.set_clim(0.0, 1.0)
    ax.add_collection(lines)
    start_colour, end_colour = lines.cmap(0.0), lines.cmap(1.0)
    ax.scatter(
        xy[:, 0, 0], xy[:, 0, 1], s=size, facecolors="white", edgecolors=[start_colour], linewidths=0.9, zorder=3
    )
    ax.scatter(xy[:, -1, 0], xy[:, -1, 1], s=size, color=[end_colour], edgecolors="black", linewidths=0.3, zorder=4)
    ax.autoscale_view()
    fig.colorbar(lines, ax=ax, label="time t", shrink=0.8, pad=0.02)
    handles = [
        Line2D(
            [], [], marker="o", ls="", markerfacecolor="white", markeredgecolor=start_colour, label="source (t = 0)"
        ),
        Line2D([], [], marker="o", ls="", color=end_colour, markeredgecolor="black", label="generated (t = 1)"),
    ]
    if real is not None:
        handles.append(Line2D([], [], marker="o", ls="", color=real_color, label="measured cells"))
    ax.legend(handles=handles, frameon=False, fontsize=7, loc="best")
    if projection is None:
        ax.set_xlabel(f"{axis_label}{dims[0] + 1}")
        ax.set_ylabel(f"{axis_label}{dims[1] + 1}")
    else:
        label = axis_label if axis_label != "PC" else "projection "
        ax.set_xlabel(f"{label}1")
        ax.set_ylabel(f"{label}2")
    ax.set_title(title if title is not None else f"{xy.shape[0]} trajectories, {n_time} time points", fontsize=10)
    return finish(fig, ax, show=show, return_fig=return_fig, save=save)


def _projector(projection, dims, n_comp: int) -> Callable[[np.ndarray], np.ndarray]:
    if projection is None:
        if len(dims) != 2 or not all(0 <= int(d) < n_comp for d in dims):
            raise ValueError(f"dims must be two indices in [0, {n_comp}), got {dims}.")
        return lambda a: a[..., list(dims)]
    if callable(projection):

        def apply(a: np.ndarray) -> np.ndarray:
            flat = a.reshape(-1, n_comp)
            out = np.asarray(projection(flat), dtype=float)
            if out.shape != (flat.shape[0], 2):
                raise ValueError(f"projection must map shape {flat.shape} to {(flat.shape[0], 2)}, got {out.shape}.")
            return out.reshape(*a.shape[:-1], 2)

        return apply
    matrix = np.asarray(projection, dtype=float)
    if matrix.shape != (n_comp, 2):
        raise ValueError(f"projection matrix must have shape ({n_comp}, 2), got {matrix.shape}.")
    return lambda a: a @ matrix
