"""Train CellFlow (cellflow-tools 0.0.9, JAX on CPU) on the exported Norman split and predict the held-out doubles.

Runs in ``benchmarks/peers/.venv-cellflow`` (``make peers-env``), never in the project's environment.
Set-up as CellFlow's documentation describes for combinations (``CellFlow.prepare_data``):
  * cells in a 50-component centred PCA of the training cells (``cellflow.preprocessing.centered_pca``,
    as the tutorials' ``sample_rep="X_pca"``); predictions are mapped back to the 500 genes with
    ``reconstruct_pca`` and clipped at 0;
  * perturbation covariates ``{"gene": ("pert_a", "pert_b")}`` with one-hot representations of the
    single perturbations in ``uns`` (``control`` = zero vector, so a single is a one-element set), so
    a double is the pooled set of its two singles (default ``attention_token`` pooling);
  * ``cell_type`` as sample covariate (one-hot) and split covariate (one control population per line);
  * OT-FM solver with ``match_linear``; the source of a K562 prediction is the K562 controls.
Settings: CellFlow's ``prepare_model`` defaults (velocity field 3 x 2,048 / decoder 3 x 4,096, Adam 5e-5
with 20-step gradient accumulation) cannot take more than a handful of optimiser steps in a few CPU
minutes, so they are scaled down for the budget (stated in the output): velocity field hidden
``--width`` (3 layers), decoder 2 x width, time encoder 2 x width with 64 frequencies, condition
embedding 64, Adam ``--lr`` without accumulation, batch 1,024 (the default). Training runs in chunks of
``--chunk`` iterations until ``--budget`` wall-clock seconds are spent.

Run: ``.venv-cellflow/bin/python benchmarks/peers/run_cellflow.py --work benchmarks/peers/work --budget 300``.
Writes ``pred_cellflow.h5ad`` and ``cellflow_run.json`` to ``--work``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> dict:
    """Train CellFlow and write its predictions; return the run record.

    Parameters
    ----------
    argv
        Command-line arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    The run record written to ``cellflow_run.json`` (status ``ok`` or ``failed`` with the error).
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=HERE / "work")
    parser.add_argument("--budget", type=float, default=300.0, help="training wall-clock seconds")
    parser.add_argument("--chunk", type=int, default=50, help="iterations per training call")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--n-comps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    record: dict = {"peer": "cellflow", "budget_seconds": args.budget, "python": platform.python_version()}
    try:
        record.update(run(args))
        record["status"] = "ok"
    except Exception as err:  # recorded for evaluate_peers.py, then re-raised
        record.update(status="failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
        raise
    finally:
        args.work.mkdir(parents=True, exist_ok=True)
        (args.work / "cellflow_run.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    return record


def run(args: argparse.Namespace) -> dict:
    """The CellFlow run proper (see the module docstring)."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from importlib.metadata import version

    import anndata as ad
    import jax
    import numpy as np
    import optax
    import pandas as pd
    from cellflow.model import CellFlow
    from cellflow.preprocessing import centered_pca, reconstruct_pca

    split = json.loads((args.work / "split.json").read_text())
    key, context = split["perturbation_key"], split["context"]
    train = ad.read_h5ad(args.work / "train.h5ad")
    train.obs["is_control"] = (train.obs[key].astype(str) == "control").to_numpy()
    for column in ("pert_a", "pert_b", "cell_type"):
        train.obs[column] = train.obs[column].astype(str).astype("category")
    centered_pca(train, n_comps=args.n_comps, keep_centered_data=False)

    genes = sorted({g for c in ("pert_a", "pert_b") for g in train.obs[c].unique()} - {"control"})
    for condition in split["predict"]:
        missing = set(condition.split("+")) - set(genes)
        if missing:
            raise ValueError(f"{condition}: single perturbation(s) {sorted(missing)} never seen in training.")
    eye = np.eye(len(genes), dtype=np.float32)
    train.uns["gene_onehot"] = {g: eye[i] for i, g in enumerate(genes)} | {"control": np.zeros(len(genes), np.float32)}
    lines = sorted(train.obs["cell_type"].unique())
    eye_l = np.eye(len(lines), dtype=np.float32)
    train.uns["cell_type_onehot"] = {c: eye_l[i] for i, c in enumerate(lines)}

    cf = CellFlow(train, solver="otfm")
    cf.prepare_data(
        sample_rep="X_pca",
        control_key="is_control",
        perturbation_covariates={"gene": ("pert_a", "pert_b")},
        perturbation_covariate_reps={"gene": "gene_onehot"},
        sample_covariates=["cell_type"],
        sample_covariate_reps={"cell_type": "cell_type_onehot"},
        split_covariates=["cell_type"],
    )
    w = args.width
    model_settings = {
        "condition_embedding_dim": 64,
        "time_freqs": 64,
        "time_encoder_dims": (w, w),
        "hidden_dims": (w, w, w),
        "decoder_dims": (2 * w, 2 * w),
        "optimizer": f"optax.adam({args.lr:g})",
    }
    cf.prepare_model(
        condition_embedding_dim=64,
        time_freqs=64,
        time_encoder_dims=(w, w),
        hidden_dims=(w, w, w),
        decoder_dims=(2 * w, 2 * w),
        optimizer=optax.adam(args.lr),
        seed=args.seed,
    )
    iterations, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < args.budget:
        cf.train(num_iterations=args.chunk, batch_size=args.batch_size, valid_freq=10**9)
        iterations += args.chunk
    train_seconds = time.perf_counter() - t0

    ctx_mask = np.ones(train.n_obs, dtype=bool)
    for column, value in context.items():
        ctx_mask &= (train.obs[column].astype(str) == value).to_numpy()
    source = train[ctx_mask & train.obs["is_control"].to_numpy()].copy()
    covariates = pd.DataFrame(
        {
            "pert_a": [c.split("+")[0] for c in split["predict"]],
            "pert_b": [c.split("+")[1] if "+" in c else "control" for c in split["predict"]],
            "cell_type": context["cell_type"],
            key: split["predict"],
            "is_control": False,
        }
    )
    for column in ("pert_a", "pert_b", "cell_type"):
        covariates[column] = covariates[column].astype("category")
    out = cf.predict(source, covariate_data=covariates, sample_rep="X_pca", condition_id_key=key)
    rng = np.random.default_rng(args.seed)
    pieces = []
    for condition in split["predict"]:
        z = np.asarray(out[condition])
        n = split["n_cells"][condition]
        z = z[rng.choice(len(z), size=n, replace=n > len(z))]
        piece = ad.AnnData(
            X=np.zeros((n, train.n_vars), dtype=np.float32),
            obs=pd.DataFrame({key: condition, **context}, index=[f"cellflow-{condition}-{i}" for i in range(n)]),
            var=pd.DataFrame(index=train.var_names.copy()),
        )
        piece.obsm["X_pca"] = z
        reconstruct_pca(piece, use_rep="X_pca", ref_adata=train, layers_key_added="X_recon")
        piece = ad.AnnData(
            X=np.clip(np.asarray(piece.layers["X_recon"]), 0, None).astype(np.float32),
            obs=piece.obs,
            var=pd.DataFrame(index=train.var_names.copy()),
        )
        pieces.append(piece)
    pred = ad.concat(pieces)
    pred.var_names = train.var_names.copy()
    pred.write_h5ad(args.work / "pred_cellflow.h5ad")
    return {
        "version": version("cellflow-tools"),
        "backend": f"JAX {jax.__version__} on {jax.default_backend()}",
        "settings": {**model_settings, "batch_size": args.batch_size, "n_comps": args.n_comps, "seed": args.seed},
        "train_seconds": train_seconds,
        "iterations": iterations,
        "n_predicted": int(pred.n_obs),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }


if __name__ == "__main__":
    main()
