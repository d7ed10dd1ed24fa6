"""Score the peers' predictions (CPA, CellFlow) on the held-out Norman doubles exactly as norman_combos.py does.

Reads ``--work``: ``split.json`` (from ``export_split.py``), ``pred_<peer>.h5ad`` and ``<peer>_run.json``
(from ``run_<peer>.py``). Checks that the split on disk is the one ``norman_combos.py`` uses (same
training cells, genes and held-out lists, by fingerprint), then scores each prediction with
``calmflow_sc.tl.evaluate`` against the measured K562 cells, the K562 controls as reference and the
default ``n_top_degs`` (what ``norman_combos.py`` does). The control-unchanged and additive baselines
are scored on the same conditions for reference. A peer that failed to run is listed with its error.

Run with the project's ``.venv``: ``python benchmarks/peers/evaluate_peers.py --data PATH --work DIR``.
Writes ``benchmarks/results/peers_norman_combos.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import anndata as ad
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import calmflow_sc as cf  # noqa: E402
from _common import git_commit  # noqa: E402
from calmflow_sc.baselines import additive_baseline, control_baseline  # noqa: E402
from norman_combos import BOTH_SEEN, CONTEXT, DEFAULT_DATA, KEY, ONE_SEEN  # noqa: E402
from peers.norman_hook import PEERS_RESULT, split_fingerprint  # noqa: E402

RESULTS = HERE.parent / "results"
PEERS = ("cpa", "cellflow")


def main(argv: list[str] | None = None) -> dict:
    """Score the peers; return the results dict also written to JSON/Markdown.

    Parameters
    ----------
    argv
        Command-line arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    The results (split, per-peer run information, per-condition rows, summary).
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("CALMFLOW_DATA", DEFAULT_DATA)))
    parser.add_argument("--work", type=Path, default=HERE / "work")
    parser.add_argument("--peers", nargs="+", default=list(PEERS), choices=list(PEERS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    commit = git_commit()
    split_path = args.work / "split.json"
    if not split_path.is_file():
        raise FileNotFoundError(f"{split_path} not found: run benchmarks/peers/export_split.py first.")
    split = json.loads(split_path.read_text())

    adata = ad.read_h5ad(args.data)
    held = BOTH_SEEN + ONE_SEEN
    labels = adata.obs[KEY].astype(str)
    train_view = adata[~labels.isin(held).to_numpy()].copy()
    fingerprint = split_fingerprint(train_view, held, BOTH_SEEN)
    if split["fingerprint"] != fingerprint:
        raise ValueError(
            f"{split_path} was written for another split (fingerprint {split['fingerprint']}, this data and "
            f"norman_combos.py's held-out lists give {fingerprint}); rerun export_split.py and the peers."
        )
    # the same measured cells and control reference as norman_combos.py
    real = adata[(labels.isin([*held, "control"]) & (adata.obs["cell_type"] == CONTEXT["cell_type"])).to_numpy()].copy()
    n_cells = split["n_cells"]
    conditions = list(split["predict"])

    frames, runs = [], {}
    for name, fn in (("control", control_baseline), ("additive", additive_baseline)):
        preds = [
            fn(train_view, c, perturbation_key=KEY, context=CONTEXT, n_cells=n_cells[c], seed=args.seed)
            for c in conditions
        ]
        frame = cf.tl.evaluate(ad.concat(preds, index_unique="-"), real, KEY, "control", model_name=name)
        frames.append(frame.assign(peer=False))

    for peer in args.peers:
        run_path, pred_path = args.work / f"{peer}_run.json", args.work / f"pred_{peer}.h5ad"
        run = json.loads(run_path.read_text()) if run_path.is_file() else {"status": "not run"}
        runs[peer] = run
        if run.get("status") != "ok" or not pred_path.is_file():
            run.setdefault("status", "failed")
            continue
        pred = ad.read_h5ad(pred_path)
        if KEY not in pred.obs:
            raise KeyError(f"{pred_path} has no obs column {KEY!r}.")
        if not pred.var_names.equals(real.var_names):
            raise ValueError(f"{pred_path} does not have the 500 genes of the data in the same order.")
        counts = pred.obs[KEY].astype(str).value_counts().to_dict()
        wrong = {c: counts.get(c, 0) for c in conditions if counts.get(c, 0) != n_cells[c]}
        if wrong:
            raise ValueError(f"{pred_path}: cells per condition {wrong} differ from the measured {n_cells}.")
        label = f"{peer} {run.get('version', '?')} ({run.get('budget_seconds', 0):.0f} s)"
        frame = cf.tl.evaluate(pred, real, KEY, "control", conditions=conditions, model_name=label)
        frames.append(frame.assign(peer=True))

    table = pd.concat(frames, ignore_index=True)
    summary = table.groupby(["model", "metric"], sort=False)["value"].agg(["mean", "median"]).reset_index()
    results = {
        "benchmark": "peers_norman_combos",
        "command": "python benchmarks/peers/evaluate_peers.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "git_commit": commit,
        "split_fingerprint": fingerprint,
        "split": split,
        "evaluation": "calmflow_sc.tl.evaluate against the measured K562 cells, K562 controls as reference, "
        "n_top_degs=20 (as benchmarks/norman_combos.py)",
        "metrics": cf.tl.METRICS,
        "runs": runs,
        "per_condition": table.to_dict("records"),
        "summary": summary.to_dict("records"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / PEERS_RESULT).write_text(json.dumps(results, indent=2, default=float) + "\n")
    (args.out / PEERS_RESULT.replace(".json", ".md")).write_text(to_markdown(results, summary))
    print((args.out / PEERS_RESULT.replace(".json", ".md")).read_text())
    return results


def to_markdown(results: dict, summary: pd.DataFrame) -> str:
    """Render the results as Markdown.

    Parameters
    ----------
    results
        The dict returned by :func:`main`.
    summary
        Mean and median per model and metric.

    Returns
    -------
    Markdown text.
    """
    split = results["split"]
    lines = [
        "# Peers on the held-out Norman doubles (both singles seen)",
        "",
        f"Command: `{results['command']}` (code at commit {results['git_commit']})  ",
        f"Split: training = the shared data without {', '.join(split['held_out_from_training'])} "
        f"({split['n_train_cells']} cells, {split['genes']} genes, fingerprint {results['split_fingerprint']}); "
        f"predicted: {', '.join(split['predict'])} in {split['context']}, as many cells as measured.  ",
        f"Evaluation: {results['evaluation']}.",
        "",
        "Metric definitions: " + "; ".join(f"`{k}`: {v}" for k, v in results["metrics"].items()),
        "",
        "## Runs",
        "",
    ]
    for peer, run in results["runs"].items():
        if run.get("status") == "ok":
            progress = f"{run['iterations']} iterations" if "iterations" in run else f"{run.get('epochs', '?')} epochs"
            lines.append(
                f"- **{peer}** {run.get('version')}: {run.get('settings')}; "
                f"training {run.get('train_seconds', 0):.0f} s "
                f"(budget {run.get('budget_seconds', 0):.0f} s, {progress}), "
                f"Python {run.get('python')}, {run.get('backend', '')}."
            )
        else:
            lines.append(f"- **{peer}**: {run.get('status')}: `{run.get('error', 'no run file')}`")
    lines += ["", "## Mean (median) across the held-out doubles", ""]
    mean = summary.pivot(index="model", columns="metric", values="mean")
    median = summary.pivot(index="model", columns="metric", values="median")
    cols = list(mean.columns)
    lines.append("| model | " + " | ".join(cols) + " |")
    lines.append("|---|" + "---|" * len(cols))
    for model in mean.index:
        lines.append(
            f"| {model} | " + " | ".join(f"{mean.loc[model, c]:.4f} ({median.loc[model, c]:.4f})" for c in cols) + " |"
        )
    lines += ["", "control and additive: the reference baselines of norman_combos.py on the same conditions.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
