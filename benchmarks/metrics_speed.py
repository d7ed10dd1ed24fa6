"""Time of the ``calmflow_sc.tl`` distances on two sets of 10,000 cells.

Two Gaussian clouds of ``--n-cells`` cells each (the second shifted by 0.5 in every dimension) in
50 dimensions (a PCA space) and in 500 dimensions (the Norman genes); each distance is timed on the
full sets, with the settings ``tl.evaluate`` uses: ``mmd`` (multi-scale RBF, widths from the
median distance), ``energy_distance`` (plain and squared), ``wasserstein`` (exact OT and Sinkhorn
on subsamples of ``max_cells``; stated in the table). Best of ``--repeats`` runs.

Run: ``python benchmarks/metrics_speed.py [--n-cells 10000] [--threads 1]``.
Writes ``benchmarks/results/metrics_speed.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

import calmflow_sc as cf
from _common import git_commit, machine

RESULTS = Path(__file__).resolve().parent / "results"


def _best_time(fn, repeats: int) -> tuple[float, float]:
    """Best wall time of ``repeats`` calls and the value of the last call."""
    best, value = float("inf"), float("nan")
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
    return best, float(value)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-cells", type=int, default=10_000)
    parser.add_argument("--dims", type=int, nargs="+", default=[50, 500])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start_all = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    metrics = {
        "mmd": lambda x, y: cf.tl.mmd(x, y),
        "energy_distance": lambda x, y: cf.tl.energy_distance(x, y),
        "energy_distance (squared)": lambda x, y: cf.tl.energy_distance(x, y, squared=True),
        "wasserstein (exact, 2,000-cell subsamples)": lambda x, y: cf.tl.wasserstein(x, y, max_cells=2000),
        "wasserstein (Sinkhorn eps 0.05, 5,000-cell subsamples)": lambda x, y: cf.tl.wasserstein(
            x, y, max_cells=5000, method="sinkhorn"
        ),
    }
    rows = []
    for dim in args.dims:
        x = rng.standard_normal((args.n_cells, dim)).astype(np.float32)
        y = (rng.standard_normal((args.n_cells, dim)) + 0.5).astype(np.float32)
        for name, fn in metrics.items():
            seconds, value = _best_time(lambda fn=fn, x=x, y=y: fn(x, y), args.repeats)
            rows.append({"dim": dim, "metric": name, "seconds": round(seconds, 3), "value": value})
            print(rows[-1], flush=True)
    result = {
        "benchmark": "metrics_speed",
        "command": "python benchmarks/metrics_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "seed": args.seed,
        "git_commit": git_commit(),
        "n_cells": args.n_cells,
        "repeats": args.repeats,
        "rows": rows,
        "wall_seconds": round(time.perf_counter() - start_all, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "metrics_speed.json").write_text(json.dumps(result, indent=2))
    lines = [
        f"# Distances on {args.n_cells:,} x {args.n_cells:,} cells",
        "",
        f"Command: `{result['command'].strip()}` (code at commit {result['git_commit']})  ",
        f"Machine: {result['machine']}; seed {args.seed}; best of {args.repeats} runs; total wall time "
        f"{result['wall_seconds']:.0f} s.  ",
        "Data: two Gaussian clouds of that many cells each, the second shifted by 0.5 in every dimension.",
        "",
        "| dimensions | metric | seconds | value |",
        "|---|---|---|---|",
        *[f"| {r['dim']} | {r['metric']} | {r['seconds']:.2f} | {r['value']:.4g} |" for r in rows],
        "",
    ]
    (args.out / "metrics_speed.md").write_text("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
