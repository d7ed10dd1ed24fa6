"""Training curves: loss and its reconstruction and KL parts per epoch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from calmflow_sc.pl._utils import finish

# what CaLMFlowTrainingPlan logs (see calmflow_sc/model/_training_plan.py)
PARTS = {
    "loss": ("train_loss", "validation_loss"),
    "reconstruction": ("reconstruction_train", "reconstruction_validation"),
    "KL": ("kl_train", "kl_validation"),
}
_PART_TITLES = {"loss": "loss (reconstruction + β KL)", "reconstruction": "reconstruction", "KL": "KL"}


def history(
    model_or_history: Any,
    *,
    keys: Sequence[str] | None = None,
    logy: bool = False,
    title: str | None = None,
    figsize: tuple[float, float] | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    save: str | Path | None = None,
) -> Figure | Axes | list[Axes] | None:
    """Training and validation loss, and its reconstruction and KL parts, per epoch.

    Parameters
    ----------
    model_or_history
        A trained :class:`~calmflow_sc.CaLMFlowModel` (its ``history``), the history itself (a
        dict of key -> DataFrame indexed by epoch, as scvi-tools keeps it) or one DataFrame
        with a column per key.
    keys
        Keys to draw. Default: those logged by the training plan that are present
        (``train_loss``, ``validation_loss``, ``reconstruction_train``,
        ``reconstruction_validation``, ``kl_train``, ``kl_validation``). They are grouped into one
        panel per part (loss, reconstruction, KL; other keys get their own panel); training
        curves are solid, validation dashed.
    logy
        Logarithmic y axis.
    title
        Figure title (suptitle; the axes title with ``ax``).
    figsize
        Size of a new figure.
    ax
        Draw all selected keys into this one axes.
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
    frame = _as_frame(model_or_history)
    if keys is None:
        keys = [k for part in PARTS.values() for k in part if k in frame.columns]
        if not keys:
            keys = list(frame.columns)
    else:
        keys = [keys] if isinstance(keys, str) else list(keys)
        missing = [k for k in keys if k not in frame.columns]
        if missing:
            raise KeyError(f"history has no keys {missing}; available: {list(frame.columns)}.")
    if not keys:
        raise ValueError("the history is empty; train the model first.")
    panels: dict[str, list[str]] = {}
    for key in keys:
        part = next((p for p, members in PARTS.items() if key in members), key)
        panels.setdefault(part, []).append(key)

    if ax is None:
        n = len(panels)
        fig, axs = plt.subplots(1, n, figsize=figsize or (3.6 * n, 3.2), squeeze=False, layout="constrained")
        axes = list(axs[0])
        groups = list(panels.items())
    else:
        fig, axes = ax.figure, [ax]
        groups = [("", keys)]
    for a, (part, members) in zip(axes, groups, strict=True):
        for key in members:
            series = frame[key].dropna()
            validation = "validation" in key
            a.plot(
                series.index,
                series.to_numpy(),
                marker="o",
                markersize=3,
                lw=1.4,
                ls="--" if validation else "-",
                label=_label(key, part),
            )
        a.set_xlabel("epoch")
        a.set_ylabel(part if part else "value")
        if part:
            a.set_title(_PART_TITLES.get(part, part), fontsize=10)
        if logy:
            a.set_yscale("log")
        a.spines[["top", "right"]].set_visible(False)
        a.legend(frameon=False, fontsize=8)
        if len(frame.index) <= 12:
            a.set_xticks(list(frame.index))
    if title is not None:
        (axes[0].set_title(title) if ax is not None else fig.suptitle(title))
    return finish(
        fig, axes[0] if ax is not None or len(axes) == 1 else axes, show=show, return_fig=return_fig, save=save
    )


def _label(key: str, part: str) -> str:
    if part in PARTS:
        return "validation" if "validation" in key else "train"
    return key


def _as_frame(obj: Any) -> pd.DataFrame:
    if isinstance(obj, pd.DataFrame):
        return obj
    hist = getattr(obj, "history", obj)
    if hist is None:
        raise ValueError("the model has no training history; train it first.")
    if not isinstance(hist, Mapping):
        raise TypeError(
            f"expected a CaLMFlowModel, a history dict (key -> DataFrame) or a DataFrame, got {type(obj).__name__}."
        )
    columns = {}
    for key, value in hist.items():
        if isinstance(value, pd.DataFrame):
            if value.shape[1] == 0:
                continue
            columns[key] = value[key] if key in value.columns else value.iloc[:, 0]
        elif isinstance(value, pd.Series):
            columns[key] = value
        else:
            columns[key] = pd.Series(value)
    if not columns:
        raise ValueError("the history is empty; train the model first.")
    frame = pd.DataFrame(columns)
    frame.index.name = "epoch"
    return frame
