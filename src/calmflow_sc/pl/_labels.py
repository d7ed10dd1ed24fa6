"""Simple non-overlapping text labels for points (no extra dependency)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes


def label_points(
    ax: Axes,
    x: np.ndarray,
    y: np.ndarray,
    labels: Sequence[str],
    *,
    side: np.ndarray | None = None,
    fontsize: float = 7,
    offset: float = 16,
    color: str = "0.15",
    n_iter: int = 300,
) -> list:
    """Annotate points with labels pushed apart so that they do not overlap.

    Labels start ``offset`` points from their point, diagonally up-left (``side`` +1) or
    down-right (``side`` -1), then overlapping labels are pushed apart; a thin line joins each
    label to its point. Labels are kept inside the axes. Positions are offsets in points, so they
    survive later layout changes.

    Parameters
    ----------
    ax
        Axes whose data limits are already final.
    x, y
        Data coordinates of the points.
    labels
        Text of each label.
    side
        +1 or -1 per point (default +1).
    fontsize, offset, color
        Text size, initial distance in points, text colour.
    n_iter
        Iterations of the pushing.

    Returns
    -------
    The annotation artists.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(labels) == 0:
        return []
    side = np.ones(len(x)) if side is None else np.where(np.asarray(side) >= 0, 1.0, -1.0)
    if len(ax.figure.axes) <= 2:
        ax.figure.draw_without_rendering()  # settle layout and aspect so that display positions are final
    else:  # drawing a figure of many panels for each is slow; the layout may still shrink the axes a little
        ax.apply_aspect()
    to_points = 72.0 / ax.figure.dpi
    anchor = ax.transData.transform(np.c_[x, y]) * to_points  # in points
    width = np.array([0.62 * fontsize * len(str(t)) + 3 for t in labels])
    height = 1.25 * fontsize + 2
    direction = np.c_[-side, side] / np.sqrt(2)
    pos = anchor + offset * direction + np.c_[-side * width / 2, np.zeros(len(x))]
    box = ax.get_window_extent()
    (x0, y0), (x1, y1) = np.asarray(box.get_points()) * to_points
    margin = 3.0 if len(ax.figure.axes) <= 2 else 8.0
    low = np.c_[x0 + width / 2 + margin, np.full(len(x), y0 + height / 2 + margin)]
    high = np.c_[x1 - width / 2 - margin, np.full(len(x), y1 - height / 2 - margin)]
    high = np.maximum(high, low)  # a label wider than the axes is centred as well as possible
    for _ in range(n_iter):
        pos = np.clip(pos, low, high)  # keep labels inside the axes (off the ticks, title and neighbours)
        moved = False
        for i in range(len(pos)):
            dx = pos[:, 0] - pos[i, 0]
            dy = pos[:, 1] - pos[i, 1]
            overlap_x = (width + width[i]) / 2 - np.abs(dx)
            overlap_y = height - np.abs(dy)
            hit = (overlap_x > 0) & (overlap_y > 0)
            hit[i] = False
            for j in np.flatnonzero(hit):
                sign = np.sign(dy[j]) if dy[j] != 0 else (1.0 if j > i else -1.0)
                push = overlap_y[j] / 2 + 0.5
                pos[j, 1] += sign * push
                pos[i, 1] -= sign * push
                moved = True
        if not moved:
            break
    pos = np.clip(pos, low, high)
    artists = []
    for xi, yi, (px, py), (lx, ly), w, text in zip(x, y, anchor, pos, width, labels, strict=True):
        # start the leader line where the line from the label's centre to its point leaves the label's box
        dx, dy = px - lx, py - ly
        exit_t = min((w / 2) / abs(dx) if dx else np.inf, (height / 2) / abs(dy) if dy else np.inf, 1.0)
        relpos = (0.5 + dx * exit_t / w, 0.5 + dy * exit_t / height)
        artists.append(
            ax.annotate(
                str(text),
                xy=(xi, yi),
                xycoords="data",
                xytext=(lx - px, ly - py),
                textcoords="offset points",
                ha="center",
                va="center",
                fontsize=fontsize,
                color=color,
                # no clipping of the line by patches (cheap to draw)
                arrowprops={
                    "arrowstyle": "-",
                    "lw": 0.5,
                    "color": "0.45",
                    "shrinkA": 0,
                    "shrinkB": 0,
                    "patchA": None,
                    "relpos": relpos,
                },
            )
        )
    return artists
