"""Write the held-out Norman split for the peer methods (CPA, CellFlow) to a work folder.

The split is the one ``benchmarks/norman_combos.py`` trains CaLMFlow on: every cell of the shared data
except the 8 held-out doubles (5 with both singles measured, 3 with one), all cell lines, context =
``cell_type``. The peers predict the 5 doubles whose two singles were measured (K562). Written to
``--work`` (gitignored, never into the repository):
  * ``train.h5ad``: training cells (same 500 genes, log-normalised ``X``), obs ``condition``,
    ``cell_type``, ``pert_a`` / ``pert_b`` (single perturbations of a condition; ``control`` when absent);
  * ``split.json``: the held-out conditions to predict, the number of measured K562 cells of each,
    the context, the data file and a fingerprint of the split (checked by ``evaluate_peers.py`` and
    ``norman_combos.py`` before peer rows are shown next to CaLMFlow's).

Run with the project's ``.venv``: ``python benchmarks/peers/export_split.py --data PATH --work benchmarks/peers/work``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import anndata as ad
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from norman_combos import BOTH_SEEN, CONTEXT, DEFAULT_DATA, KEY, ONE_SEEN  # noqa: E402
from peers.norman_hook import split_fingerprint  # noqa: E402

CONTROL = "control"


def parts(condition: str) -> tuple[str, str]:
    """The two single perturbations of a condition (``control`` fills a missing one)."""
    if condition == CONTROL:
        return CONTROL, CONTROL
    genes = condition.split("+")
    if len(genes) > 2:
        raise ValueError(f"condition {condition!r} has more than two parts.")
    return genes[0], genes[1] if len(genes) == 2 else CONTROL


def main(argv: list[str] | None = None) -> dict:
    """Export the split; return the ``split.json`` content.

    Parameters
    ----------
    argv
        Command-line arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    The split description written to ``split.json``.
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("CALMFLOW_DATA", DEFAULT_DATA)))
    parser.add_argument("--work", type=Path, default=HERE / "work")
    args = parser.parse_args(argv)
    if not args.data.is_file():
        raise FileNotFoundError(f"--data {args.data} does not exist.")

    adata = ad.read_h5ad(args.data)
    for column in (KEY, "cell_type"):
        if column not in adata.obs:
            raise KeyError(f"{args.data} has no obs column {column!r}.")
    held = BOTH_SEEN + ONE_SEEN
    labels = adata.obs[KEY].astype(str)
    train = adata[~labels.isin(held).to_numpy()].copy()
    train.obs = train.obs[[KEY, "cell_type"]].astype(str)
    train.obs["pert_a"] = [parts(c)[0] for c in train.obs[KEY]]
    train.obs["pert_b"] = [parts(c)[1] for c in train.obs[KEY]]
    train.X = np.asarray(train.X.todense() if hasattr(train.X, "todense") else train.X, dtype=np.float32)
    train.uns = {}
    train.var = train.var[[]]

    in_context = (adata.obs["cell_type"].astype(str) == CONTEXT["cell_type"]).to_numpy()
    n_cells = {c: int(((labels == c).to_numpy() & in_context).sum()) for c in BOTH_SEEN}
    missing = [c for c, n in n_cells.items() if n == 0]
    if missing:
        raise ValueError(f"held-out conditions {missing} have no measured cells in {CONTEXT}.")
    split = {
        "data": str(args.data.resolve()),
        "perturbation_key": KEY,
        "context": CONTEXT,
        "held_out_from_training": held,
        "predict": BOTH_SEEN,
        "n_cells": n_cells,
        "n_train_cells": int(train.n_obs),
        "genes": int(train.n_vars),
        "fingerprint": split_fingerprint(train, held, BOTH_SEEN),
    }
    args.work.mkdir(parents=True, exist_ok=True)
    train.write_h5ad(args.work / "train.h5ad")
    (args.work / "split.json").write_text(json.dumps(split, indent=2) + "\n")
    print(json.dumps(split, indent=1))
    return split


if __name__ == "__main__":
    main()
