"""Unseen perturbation combinations on the Norman 2019 K562 part of the shared data.

Held out together from training (all cells of these conditions):
  * 5 doubles whose two singles were measured: KLF1+MAP2K6, KLF1+TGFBR2, MAP2K3+MAP2K6,
    MAP2K3+SLC38A2, MAPK1+TGFBR2 ("both singles seen");
  * 3 doubles with one single measured: CNN1+MAPK1, SET+KLF1, SGK1+TBX3 ("one single seen").
CaLMFlow is trained once per source (noise, control) on all other cells (K562 and the three
glioblastoma lines, context = cell type) and predicts each held-out double with as many cells as
were measured. Baselines: control cells unchanged, additive (control + sum of measured single
shifts, gene space), and conditional flow matching (CFM, MLP velocity field + dopri5, conditioned on
multi-hot parts and cell type) with the same source, trained for the same wall-clock time as
CaLMFlow. Metrics (``calmflow_sc.tl.METRICS``) in the 500-gene log-normalised space.

Run: ``python benchmarks/norman_combos.py [--data PATH] [--max-epochs 15] [--seed 0]``
Writes ``benchmarks/results/norman_combos.json`` and ``.md``.
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
import pandas as pd
import scanpy as sc
import torch

import calmflow_sc as cf
from _common import git_commit
from calmflow_sc.baselines import CFMBaseline, additive_baseline, control_baseline
from peers.norman_hook import peer_rows

RESULTS = Path(__file__).resolve().parent / "results"

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "norman19_mcfaline23_devel.h5ad"
BOTH_SEEN = ["KLF1+MAP2K6", "KLF1+TGFBR2", "MAP2K3+MAP2K6", "MAP2K3+SLC38A2", "MAPK1+TGFBR2"]
ONE_SEEN = ["CNN1+MAPK1", "SET+KLF1", "SGK1+TBX3"]
KEY, CONTEXT = "condition", {"cell_type": "k562"}
LOWER_IS_BETTER = {"energy_distance", "mmd"}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("CALMFLOW_DATA", DEFAULT_DATA)))
    parser.add_argument("--max-epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--backbone", default="gpt-neox-small")
    parser.add_argument("--n-components", type=int, default=50)
    parser.add_argument("--beta", type=float, default=0.03, help="KL weight (the model's default; the paper uses 0.3)")
    parser.add_argument("--path-sigma", type=float, default=0.0, help="path noise at interior time points")
    parser.add_argument(
        "--temperatures",
        type=float,
        nargs="+",
        default=[1.0, 0.5],
        help="sampling temperatures to report (a sweep on the test conditions, not tuned)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sources", nargs="+", default=["noise", "control"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--cell-types", nargs="+", default=None, help="train on these cell types only (default: all in the file)"
    )
    parser.add_argument("--skip-cfm", action="store_true", help="leave CFM out (quick explorations)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    commit = git_commit()  # the code this run uses, read before anything can change
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    adata = sc.read_h5ad(args.data)
    if args.cell_types:
        adata = adata[adata.obs["cell_type"].isin(args.cell_types)].copy()
    held = BOTH_SEEN + ONE_SEEN
    real = adata[adata.obs[KEY].isin([*held, "control"]) & (adata.obs["cell_type"] == "k562")].copy()
    train_view = adata[~adata.obs[KEY].isin(held)].copy()
    n_cells = real.obs[KEY].value_counts().to_dict()
    timings, frames, not_expressible = {}, [], {}

    def score(pred: ad.AnnData, name: str, conditions: list[str]) -> None:
        frames.append(cf.tl.evaluate(pred, real, KEY, "control", conditions=conditions, model_name=name))

    t0 = time.perf_counter()
    for baseline, fn in (("control", control_baseline), ("additive", additive_baseline)):
        preds = [
            fn(train_view, c, perturbation_key=KEY, context=CONTEXT, n_cells=n_cells[c], seed=args.seed) for c in held
        ]
        score(ad.concat(preds, index_unique="-"), baseline, held)
    timings["baselines_seconds"] = time.perf_counter() - t0

    for source in args.sources:
        cf.CaLMFlowModel.setup_anndata(adata, perturbation_key=KEY, context_keys=["cell_type"])
        model = cf.CaLMFlowModel(
            adata,
            n_components=args.n_components,
            backbone=args.backbone,
            source=source,
            beta=args.beta,
            path_sigma=args.path_sigma,
        )
        t0 = time.perf_counter()
        model.train(
            max_epochs=args.max_epochs,
            batch_size=args.batch_size,
            held_out={KEY: held},
            seed=args.seed,
            enable_progress_bar=False,
        )
        timings[f"calmflow_{source}"] = {
            "train_seconds": time.perf_counter() - t0,
            "final_train_loss": float(model.history["train_loss"].iloc[-1, 0]),
            "final_validation_loss": float(model.history["validation_loss"].iloc[-1, 0]),
        }
        predicted = [c for c in held if set(model.prompts.parts(c)) <= set(model.known_parts_)]
        for c in sorted(set(held) - set(predicted)):
            unseen = sorted(set(model.prompts.parts(c)) - set(model.known_parts_))
            not_expressible[c] = f"part(s) {unseen} never seen in training"
        for i, temperature in enumerate(args.temperatures):
            name = f"calmflow-{source}" + ("" if i == 0 else f" (T={temperature:g})")
            t0 = time.perf_counter()
            pred = model.predict_perturbation(
                predicted,
                context=CONTEXT,
                n_cells=max(n_cells[c] for c in predicted),
                temperature=temperature,
                seed=args.seed,
            )
            # as many cells as were measured, per condition
            keep = pred.obs.groupby(KEY, observed=True).cumcount().to_numpy() < pred.obs[KEY].map(n_cells).to_numpy()
            pred = pred[keep].copy()
            timings[f"calmflow_{source}"][f"predict_seconds_T{temperature:g}"] = time.perf_counter() - t0
            score(pred, name, predicted)

    for source in [] if args.skip_cfm else args.sources:
        budget = timings[f"calmflow_{source}"]["train_seconds"]
        cfm = CFMBaseline(
            train_view,
            perturbation_key=KEY,
            context_keys=["cell_type"],
            n_components=args.n_components,
            source=source,
            seed=args.seed,
        )
        t0 = time.perf_counter()
        cfm.train(max_seconds=budget, max_steps=10**9, seed=args.seed)
        timings[f"cfm_{source}"] = {
            "train_seconds": time.perf_counter() - t0,
            "steps": len(cfm.history),
            "budget": "CaLMFlow's training wall time with the same source",
        }
        cfm_predicted = [c for c in held if set(cfm.builder.parts(c)) <= set(cfm.parts)]
        pred = ad.concat(
            [cfm.predict_perturbation(c, CONTEXT, n_cells=n_cells[c], seed=args.seed) for c in cfm_predicted],
            index_unique="-",
        )
        score(pred, f"cfm-{source}", cfm_predicted)

    table = pd.concat(frames, ignore_index=True)
    # compare every model on the conditions that all of them could predict
    common = set.intersection(*(set(t["condition"]) for t in frames))
    table = table[table["condition"].isin(common)]
    peers = peer_rows(RESULTS, train_view, held, BOTH_SEEN, common)  # CPA / CellFlow, if run on this split
    table = pd.concat([table, peers], ignore_index=True) if not peers.empty else table
    table["split"] = table["condition"].map(lambda c: "both singles seen" if c in BOTH_SEEN else "one single seen")
    summary = table.groupby(["split", "model", "metric"], sort=False)["value"].agg(["mean", "median"]).reset_index()
    results = {
        "benchmark": "norman_combos",
        "command": "python benchmarks/norman_combos.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__} (CPU)",
        "seed": args.seed,
        "git_commit": commit,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "metrics": cf.tl.METRICS,
        "timings": timings,
        "not_expressible": not_expressible,
        "per_condition": table.to_dict("records"),
        "summary": summary.to_dict("records"),
    }
    results["verdict"] = verdict(summary)
    (args.out / "norman_combos.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    (args.out / "norman_combos.md").write_text(to_markdown(results, table, summary))
    print((args.out / "norman_combos.md").read_text())
    return results


def verdict(summary: pd.DataFrame) -> dict:
    """For each CaLMFlow variant and split: does it beat control-unchanged / additive on every metric (means)?"""
    out = {}
    for split, part in summary.groupby("split"):
        means = part.pivot(index="metric", columns="model", values="mean")
        for model in [m for m in means.columns if m.startswith("calmflow")]:
            for ref in ("control", "additive"):
                better = {
                    metric: bool(means.loc[metric, model] < means.loc[metric, ref])
                    if metric in LOWER_IS_BETTER
                    else bool(means.loc[metric, model] > means.loc[metric, ref])
                    for metric in means.index
                }
                out[f"{split} | {model} beats {ref}"] = {"all_metrics": all(better.values()), "per_metric": better}
    return out


def to_markdown(results: dict, table: pd.DataFrame, summary: pd.DataFrame) -> str:
    lines = [
        "# Unseen combinations (Norman 2019, K562)",
        "",
        f"Command: `{results['command']}` (code at commit {results['git_commit']})  ",
        f"Machine: {results['machine']}; seed {results['seed']}.  ",
        f"Settings: {results['settings']}.  ",
        f"Timings: {json.dumps(results['timings'], default=float)}  ",
        f"Held-out doubles CaLMFlow cannot express: {results['not_expressible']}; "
        "tables compare all models on the remaining conditions.  ",
        f"The first temperature ({results['settings']['temperatures'][0]:g}) is the model default and the headline; "
        "other temperatures are a sweep on the test conditions, shown for information, not tuned.",
        "",
        "Metric definitions: " + "; ".join(f"`{k}`: {v}" for k, v in results["metrics"].items()),
        "",
    ]
    for split, part in summary.groupby("split", sort=False):
        lines += [f"## {split}: mean (median) across conditions", ""]
        mean = part.pivot(index="model", columns="metric", values="mean")
        median = part.pivot(index="model", columns="metric", values="median")
        cols = list(mean.columns)
        lines.append("| model | " + " | ".join(cols) + " |")
        lines.append("|---|" + "---|" * len(cols))
        for model in mean.index:
            cells = [f"{mean.loc[model, c]:.4f} ({median.loc[model, c]:.4f})" for c in cols]
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Verdict (means)", ""]
    for key, value in results["verdict"].items():
        lost = [m for m, ok in value["per_metric"].items() if not ok]
        lines.append(
            f"- {key}: {'yes' if value['all_metrics'] else 'no'}" + (f" (not on: {', '.join(lost)})" if lost else "")
        )
    per = table.pivot_table(index=["condition", "model"], columns="metric", values="value")
    lines += [
        "",
        "## Per condition",
        "",
        "| condition | model | " + " | ".join(per.columns) + " |",
        "|---|---|" + "---|" * len(per.columns),
    ]
    lines += [f"| {c} | {m} | " + " | ".join(f"{v:.4f}" for v in row) + " |" for (c, m), row in per.iterrows()]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
