"""Transfer a perturbation to an unseen cell line (glioblastoma part of the shared data).

Data: the glioblastoma lines A172, T98G and U87MG (``--lines``; K562 left out). SGK1 knockdown is held
out in U87MG only (``held_out={"condition": ["SGK1"], "cell_type": ["U87MG"]}``): training sees SGK1 in
A172 and T98G, every other condition in every line, and U87MG's controls and other perturbations.
Each model then predicts SGK1 in U87MG with as many cells as were measured:
  * ``calmflow-control``: ``CaLMFlowModel(source="control")`` with the model's current defaults
    (context = cell type), ``--max-epochs`` epochs;
  * ``control``: U87MG control cells unchanged;
  * ``mean-shift``: U87MG control cells plus the mean shift of SGK1 in the other lines
    (per line: mean of its SGK1 cells minus mean of its controls; lines weighted equally), clipped at 0;
  * ``cfm-control``: ``CFMBaseline`` (OT-CFM, source control, context one-hot) trained for CaLMFlow's
    training wall time.
Scored with ``calmflow_sc.tl.evaluate`` against the measured U87MG SGK1 cells, U87MG controls as
reference (metric definitions in the output).

Run: ``python benchmarks/cell_line_transfer.py [--data PATH] [--max-epochs 15] [--threads 1]`` (``make bench``).
Writes ``benchmarks/results/cell_line_transfer.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
import torch

import calmflow_sc as cf
from _common import git_commit
from calmflow_sc.baselines import CFMBaseline, control_baseline

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "norman19_mcfaline23_devel.h5ad"
KEY, CELL_TYPE, CONTROL = "condition", "cell_type", "control"
LOWER_IS_BETTER = {"energy_distance", "mmd"}


def _dense(x) -> np.ndarray:
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def mean_shift_transfer(
    adata: ad.AnnData,
    perturbation: str,
    target_line: str,
    *,
    n_cells: int,
    seed: int = 0,
    perturbation_key: str = KEY,
    cell_type_key: str = CELL_TYPE,
    control_value: str = CONTROL,
) -> ad.AnnData:
    """Target-line controls plus the perturbation's mean shift in the other lines.

    Parameters
    ----------
    adata
        Training cells (the held-out cells must not be in it).
    perturbation
        Perturbation to transfer.
    target_line
        Cell line to predict.
    n_cells
        Cells to generate (target-line controls resampled).
    seed
        Seed of the control resampling.
    perturbation_key, cell_type_key, control_value
        obs columns and control label.

    Returns
    -------
    AnnData with ``n_cells`` cells, the genes of ``adata``, obs ``perturbation_key`` and ``cell_type_key``;
    ``uns['mean_shift']['lines']`` lists the lines whose shifts were averaged.
    """
    labels = adata.obs[perturbation_key].astype(str).to_numpy()
    lines = adata.obs[cell_type_key].astype(str).to_numpy()
    if ((labels == perturbation) & (lines == target_line)).any():
        raise ValueError(f"{perturbation!r} in {target_line!r} is in the training cells; hold it out first.")
    target_controls = np.flatnonzero((labels == control_value) & (lines == target_line))
    if not len(target_controls):
        raise ValueError(f"no {control_value!r} cells in {cell_type_key}={target_line!r}.")
    shifts, used = [], []
    for line in sorted(set(lines[labels == perturbation]) - {target_line}):
        controls = (labels == control_value) & (lines == line)
        if not controls.any():
            continue
        pert = (labels == perturbation) & (lines == line)
        shifts.append(_dense(adata.X[np.flatnonzero(pert)]).mean(0) - _dense(adata.X[np.flatnonzero(controls)]).mean(0))
        used.append(line)
    if not shifts:
        raise ValueError(f"{perturbation!r} was measured (with controls) in no line other than {target_line!r}.")
    rng = np.random.default_rng(seed)
    rows = rng.choice(target_controls, size=n_cells, replace=n_cells > len(target_controls))
    x = np.clip(_dense(adata.X[rows]) + np.mean(shifts, axis=0), 0, None).astype(np.float32)
    obs = pd.DataFrame(
        {perturbation_key: perturbation, cell_type_key: target_line},
        index=[f"mean-shift-{i}" for i in range(n_cells)],
    )
    out = ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=adata.var_names.copy()))
    out.uns["mean_shift"] = {"lines": used}
    return out


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; return the results dict also written to JSON/Markdown.

    Parameters
    ----------
    argv
        Command-line arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    The results (settings, timings, one row per model and metric).
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("CALMFLOW_DATA", DEFAULT_DATA)))
    parser.add_argument("--perturbation", default="SGK1")
    parser.add_argument("--cell-line", default="U87MG")
    parser.add_argument("--lines", nargs="+", default=["A172", "T98G", "U87MG"], help="cell lines used (all data)")
    parser.add_argument("--max-epochs", type=int, default=15)
    parser.add_argument("--max-steps", type=int, default=None, help="stop CaLMFlow after this many steps (smoke tests)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--backbone", default=None, help="CaLMFlow backbone (default: the model's default)")
    parser.add_argument("--n-components", type=int, default=None, help="PCA dimension (default: the model's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-cfm", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    commit = git_commit()  # the code this run uses, read before anything can change
    torch.set_num_threads(max(1, args.threads))
    if not args.data.is_file():
        raise FileNotFoundError(f"--data {args.data} does not exist.")

    adata = sc.read_h5ad(args.data)
    for column in (KEY, CELL_TYPE):
        if column not in adata.obs:
            raise KeyError(f"{args.data} has no obs column {column!r}.")
    unknown = sorted(set(args.lines) - set(adata.obs[CELL_TYPE].astype(str)))
    if unknown or args.cell_line not in args.lines:
        raise ValueError(
            f"--lines {args.lines} must occur in obs[{CELL_TYPE!r}] and include --cell-line {args.cell_line!r}."
        )
    adata = adata[adata.obs[CELL_TYPE].astype(str).isin(args.lines).to_numpy()].copy()
    labels, lines = adata.obs[KEY].astype(str), adata.obs[CELL_TYPE].astype(str)
    in_line = (lines == args.cell_line).to_numpy()
    held = (labels == args.perturbation).to_numpy() & in_line
    if not held.any():
        raise ValueError(f"no {args.perturbation!r} cells in {CELL_TYPE}={args.cell_line!r} to hold out.")
    real = adata[in_line & (labels.isin([args.perturbation, CONTROL])).to_numpy()].copy()
    train_view = adata[~held].copy()
    n_cells = int(held.sum())
    context = {CELL_TYPE: args.cell_line}
    wall0 = time.perf_counter()
    timings, frames = {}, []

    def score(pred: ad.AnnData, name: str) -> None:
        frames.append(cf.tl.evaluate(pred, real, KEY, CONTROL, conditions=[args.perturbation], model_name=name))

    t0 = time.perf_counter()
    score(
        control_baseline(
            train_view, args.perturbation, perturbation_key=KEY, context=context, n_cells=n_cells, seed=args.seed
        ),
        "control",
    )
    shift = mean_shift_transfer(train_view, args.perturbation, args.cell_line, n_cells=n_cells, seed=args.seed)
    score(shift, "mean-shift")
    timings["baselines_seconds"] = time.perf_counter() - t0

    cf.CaLMFlowModel.setup_anndata(adata, perturbation_key=KEY, context_keys=[CELL_TYPE])
    model_kwargs = {"source": "control"}
    if args.backbone:
        model_kwargs["backbone"] = args.backbone
    if args.n_components:
        model_kwargs["n_components"] = args.n_components
    model = cf.CaLMFlowModel(adata, **model_kwargs)
    t0, c0 = time.perf_counter(), time.process_time()
    model.train(
        max_epochs=args.max_epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        held_out={KEY: [args.perturbation], CELL_TYPE: [args.cell_line]},
        seed=args.seed,
        enable_progress_bar=False,
    )
    train_seconds = time.perf_counter() - t0
    timings["calmflow_control"] = {
        "train_seconds": train_seconds,
        "train_cpu_seconds": time.process_time() - c0,
        **{
            f"final_{name}": float(model.history[name].iloc[-1, 0])
            for name in ("train_loss", "validation_loss")
            if name in model.history and len(model.history[name])
        },
    }
    t0 = time.perf_counter()
    pred = model.predict_perturbation([args.perturbation], context=context, n_cells=n_cells, seed=args.seed)
    timings["calmflow_control"]["predict_seconds"] = time.perf_counter() - t0
    score(pred, "calmflow-control")
    n_components = model.module.n_features  # the same PCA dimension for CFM
    del model

    if not args.skip_cfm:
        cfm = CFMBaseline(
            train_view,
            perturbation_key=KEY,
            context_keys=[CELL_TYPE],
            n_components=n_components,
            source="control",
            seed=args.seed,
        )
        t0, c0 = time.perf_counter(), time.process_time()
        cfm.train(max_seconds=train_seconds, max_steps=10**9, seed=args.seed)
        timings["cfm_control"] = {
            "train_seconds": time.perf_counter() - t0,
            "train_cpu_seconds": time.process_time() - c0,
            "steps": len(cfm.history),
            "budget": "CaLMFlow's training wall time",
        }
        score(cfm.predict_perturbation(args.perturbation, context, n_cells=n_cells, seed=args.seed), "cfm-control")

    table = pd.concat(frames, ignore_index=True)
    results = {
        "benchmark": "cell_line_transfer",
        "command": "python benchmarks/cell_line_transfer.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__} (CPU)",
        "seed": args.seed,
        "git_commit": commit,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "held_out": {KEY: [args.perturbation], CELL_TYPE: [args.cell_line]},
        "n_cells": n_cells,
        "mean_shift_lines": shift.uns["mean_shift"]["lines"],
        "metrics": cf.tl.METRICS,
        "timings": timings,
        "rows": table.to_dict("records"),
        "wall_seconds": time.perf_counter() - wall0,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cell_line_transfer.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    (args.out / "cell_line_transfer.md").write_text(to_markdown(results, table))
    print((args.out / "cell_line_transfer.md").read_text())
    return results


def to_markdown(results: dict, table: pd.DataFrame) -> str:
    """Render the results as Markdown.

    Parameters
    ----------
    results
        The dict returned by :func:`main`.
    table
        The tidy evaluation table.

    Returns
    -------
    Markdown text.
    """
    held = results["held_out"]
    wide = table.pivot_table(index="model", columns="metric", values="value", sort=False)
    cols = list(wide.columns)
    best = {c: (wide[c].idxmin() if c in LOWER_IS_BETTER else wide[c].idxmax()) for c in cols if wide[c].notna().any()}
    lines = [
        f"# Cell-line transfer: {held[KEY][0]} in {held[CELL_TYPE][0]} predicted from the other lines",
        "",
        f"Command: `{results['command']}` (code at commit {results['git_commit']})  ",
        f"Machine: {results['machine']}; seed {results['seed']}; total wall time {results['wall_seconds']:.0f} s.  ",
        f"Settings: {results['settings']}.  ",
        f"Held out from training: cells with {held}; {results['n_cells']} cells predicted per model. "
        f"Mean-shift baseline averages the shifts of: {', '.join(results['mean_shift_lines'])}.  ",
        f"Timings: {json.dumps(results['timings'], default=float)}",
        "",
        "Metric definitions: " + "; ".join(f"`{k}`: {v}" for k, v in results["metrics"].items()),
        "",
        "| model | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for model, row in wide.iterrows():
        cells = [f"**{row[c]:.4f}**" if best.get(c) == model else f"{row[c]:.4f}" for c in cols]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    lines += ["", "Bold: best model per metric.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
