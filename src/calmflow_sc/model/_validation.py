"""Checks of user input that run before any expensive work."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from calmflow_sc.data.expression import check_expression

#: Rows read at once from a backed matrix.
BACKED_CHUNK = 8192


def _preview(values: Sequence, n: int = 20) -> str:
    values = [str(v) for v in values]
    head = ", ".join(repr(v) for v in values[:n])
    return head + (f", ... ({len(values)} in all)" if len(values) > n else "")


def check_obs_column(adata: AnnData, key: str, *, role: str) -> pd.Series:
    """Return ``adata.obs[key]`` as strings, or raise a clear error.

    Parameters
    ----------
    adata
        The AnnData.
    key
        obs column name.
    role
        What the column is for (``"perturbation_key"``, ``"context_keys"``), for messages.

    Returns
    -------
    The column as a string Series.
    """
    if not isinstance(key, str):
        raise TypeError(f"{role} must be an obs column name (str), got {key!r}.")
    if key not in adata.obs.columns:
        raise KeyError(f"{role}={key!r} is not a column of adata.obs; available: {_preview(adata.obs.columns)}.")
    column = adata.obs[key]
    if column.isna().any():
        n = int(column.isna().sum())
        raise ValueError(f"adata.obs[{key!r}] has {n} missing value(s); fill or drop them before setup.")
    text = column.astype(str)
    blank = text.str.strip() == ""
    if blank.any():
        raise ValueError(f"adata.obs[{key!r}] has {int(blank.sum())} empty or whitespace-only value(s).")
    return text


def check_expression_source(adata: AnnData, layer: str | None) -> None:
    """Validate the expression matrix that will be registered.

    Parameters
    ----------
    adata
        The AnnData.
    layer
        Layer name, or ``None`` for ``X``.
    """
    if layer is not None and layer not in adata.layers:
        raise KeyError(f"layer={layer!r} is not in adata.layers; available: {_preview(list(adata.layers))}.")
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ValueError(f"adata has shape {adata.shape}; need at least one cell and one gene.")
    if not adata.var_names.is_unique:
        dupes = adata.var_names[adata.var_names.duplicated()].unique()
        raise ValueError(f"adata.var_names has duplicates: {_preview(dupes)}; call adata.var_names_make_unique().")
    matrix = adata.X if layer is None else adata.layers[layer]
    if matrix is None:
        raise ValueError("adata.X is empty (None); pass layer= to use a layer.")
    source = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    if getattr(adata, "isbacked", False) and layer is None:
        # backed X: read and check it a chunk of rows at a time, never the whole matrix at once
        for start in range(0, adata.n_obs, BACKED_CHUNK):
            check_expression(matrix[start : start + BACKED_CHUNK], source=source)
        return
    check_expression(matrix, source=source)


def check_perturbations(values: pd.Series, *, key: str, control_value: str, delimiter: str) -> None:
    """Check the perturbation column: control present, parts well formed.

    Parameters
    ----------
    values
        Perturbation column as strings.
    key
        Column name, for messages.
    control_value
        Label of control cells.
    delimiter
        Combination delimiter.
    """
    unique = pd.unique(values)
    if control_value not in set(unique):
        raise ValueError(
            f"control_value={control_value!r} does not occur in adata.obs[{key!r}]; values are {_preview(unique)}."
        )
    for value in unique:
        if value == control_value:
            continue
        parts = value.split(delimiter)
        if any(not p.strip() for p in parts):
            raise ValueError(
                f"perturbation {value!r} in adata.obs[{key!r}] has an empty part with delimiter {delimiter!r}."
            )
        if control_value in [p.strip() for p in parts]:
            raise ValueError(f"perturbation {value!r} contains the control label {control_value!r} as a part.")


def held_out_mask(adata: AnnData, held_out) -> np.ndarray:
    """Boolean mask of held-out cells from a mapping or a mask.

    Parameters
    ----------
    adata
        The AnnData.
    held_out
        ``None``; a boolean array of length ``n_obs``; or a mapping from obs column to value(s):
        a cell is held out when its value is listed for every column of the mapping.

    Returns
    -------
    Boolean array of length ``n_obs``.
    """
    if held_out is None:
        return np.zeros(adata.n_obs, dtype=bool)
    if isinstance(held_out, dict):
        mask = np.ones(adata.n_obs, dtype=bool)
        for key, values in held_out.items():
            column = check_obs_column(adata, key, role="held_out key")
            values = [values] if isinstance(values, str) else list(values)
            unknown = sorted(set(map(str, values)) - set(column.unique()))
            if unknown:
                raise ValueError(f"held_out values {unknown} do not occur in adata.obs[{key!r}].")
            mask &= column.isin([str(v) for v in values]).to_numpy()
        return mask
    mask = np.asarray(held_out)
    if mask.dtype != bool or mask.shape != (adata.n_obs,):
        raise ValueError(
            f"held_out must be a mapping obs column -> values or a boolean mask of shape ({adata.n_obs},), "
            f"got dtype {mask.dtype} and shape {mask.shape}."
        )
    return mask
