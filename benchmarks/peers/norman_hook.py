"""Split fingerprint and the optional hook that adds peers' rows to ``benchmarks/norman_combos.py``'s table."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd
from anndata import AnnData

PEERS_RESULT = "peers_norman_combos.json"


def split_fingerprint(train: AnnData, held_out: Sequence[str], predict: Sequence[str]) -> str:
    """Hash of the training cell names, genes and held-out lists (identifies the split).

    Parameters
    ----------
    train
        Training cells.
    held_out
        Conditions removed from training.
    predict
        Conditions the peers predict.

    Returns
    -------
    A 16-character hex digest.
    """
    h = hashlib.sha256()
    for part in (list(train.obs_names), list(train.var_names), sorted(held_out), sorted(predict)):
        h.update("\x1f".join(map(str, part)).encode())
        h.update(b"\x1e")
    return h.hexdigest()[:16]


def peer_rows(
    results_dir: Path, train: AnnData, held_out: Sequence[str], predict: Sequence[str], conditions: Iterable[str]
) -> pd.DataFrame:
    """Per-condition rows of the peers (CPA, CellFlow), when their results exist for this very split.

    Parameters
    ----------
    results_dir
        Folder holding ``peers_norman_combos.json`` (written by ``benchmarks/peers/evaluate_peers.py``).
    train
        The training cells of the calling benchmark.
    held_out, predict
        Its held-out conditions and the conditions the peers predict.
    conditions
        Conditions kept in the calling table.

    Returns
    -------
    Rows with the columns of ``calmflow_sc.tl.evaluate``'s output (model names carry the peer's version
    and training budget); empty when there is no peers' file or it was made on another split.
    """
    path = Path(results_dir) / PEERS_RESULT
    if not path.is_file():
        return pd.DataFrame()
    peers = json.loads(path.read_text())
    if peers.get("split_fingerprint") != split_fingerprint(train, held_out, predict):
        print(f"{path.name} was made on another split; its rows are left out.")
        return pd.DataFrame()
    rows = pd.DataFrame([r for r in peers["per_condition"] if r.get("peer")])
    if rows.empty:
        return rows
    return rows[rows["condition"].isin(list(conditions))].drop(columns=["peer"])
