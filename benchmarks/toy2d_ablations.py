"""Ablations of CaLMFlow's sequence settings on the toy 2-D tasks (the paper's ablation study, small scale).

One factor at a time from ``benchmarks/toy2d.py``'s defaults (K=1 spatial token, P=8 trajectories per
sequence, N=16 time points, beta=1e-3, gpt-neox-mini, OT pairing, batch 512 points, lr 3e-3 with warm-up
and cosine decay over the budget):
  * K (spatial tokens per time point): 1, 3, 5;
  * P (trajectories per sequence): 1, 4, 8;
  * N (time points): 8, 16, 32;
  * beta (KL weight of the variational decoder): 0, 1e-3, 0.1, 0.3;
  * sampling temperature: 0.25 .. 1.5 on the one model trained with the defaults (no retraining).
Every configuration trains from scratch for the same budget: ``--budget`` CPU seconds of this process
with one torch thread (``--clock cpu``, the default: the compute a model received, robust to other jobs on
a shared machine; ``--clock wall`` for wall-clock seconds), 512 points per step. Its sampling
temperature is chosen on a validation draw among toy2d's values (0, 0.25, 0.5, 1), then it is scored
once on the test draw.

Metric: exact 2-Wasserstein distance (``calmflow_sc.tl.wasserstein``, POT ``emd2``) between 1,000
generated samples and 1,000 fresh target samples; the floor is the same distance between two
independent 1,000-sample target draws (what a perfect sampler would score).

Run: ``python benchmarks/toy2d_ablations.py [--budget 50] [--threads 1]`` (``make bench``).
Writes ``benchmarks/results/toy2d_ablations.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from _common import git_commit
from calmflow_sc.tl import wasserstein
from toy2d import TASKS, generate, train_calmflow

RESULTS = Path(__file__).resolve().parent / "results"
CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}
DEFAULTS = {"k": 1, "p": 8, "n": 16, "beta": 0.001}
FACTORS = {"k": "K (spatial tokens)", "p": "P (trajectories per sequence)", "n": "N (time points)", "beta": "beta (KL)"}


def configurations(args: argparse.Namespace) -> list[dict]:
    """The default configuration first, then one factor changed at a time (no duplicates)."""
    configs = [dict(DEFAULTS, factor="default")]
    for factor, values in (("k", args.ks), ("p", args.ps), ("n", args.ns), ("beta", args.betas)):
        for value in values:
            if value != DEFAULTS[factor]:
                configs.append(dict(DEFAULTS, **{factor: value}, factor=factor))
    return configs


def main(argv: list[str] | None = None) -> dict:
    """Run the ablation study; return the results dict also written to JSON/Markdown.

    Parameters
    ----------
    argv
        Command-line arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    The results (settings, floor, one row per configuration, temperature sweep).
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=50.0, help="training seconds (see --clock) per configuration")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-eval", type=int, default=1000)
    parser.add_argument("--task", default="noise->8gaussians", choices=list(TASKS))
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 3, 5])
    parser.add_argument("--ps", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--ns", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--betas", type=float, nargs="+", default=[0.0, 0.001, 0.1, 0.3])
    parser.add_argument(
        "--select-temperatures",
        type=float,
        nargs="+",
        default=[0.0, 0.25, 0.5, 1.0],
        help="temperatures among which each configuration's is chosen on a validation draw (as toy2d)",
    )
    parser.add_argument(
        "--temperatures",
        type=float,
        nargs="+",
        default=[0.25, 0.5, 0.75, 1.0, 1.25, 1.5],
        help="temperature sweep on the default model (scored on the test draw)",
    )
    parser.add_argument("--backbone", default="gpt-neox-mini")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--pairing", choices=["independent", "ot"], default="ot")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--clock",
        choices=["cpu", "wall"],
        default="cpu",
        help="what the budget counts: CPU seconds of this process (robust on a shared machine; with 1 thread, "
        "the compute a model received) or wall-clock seconds",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    commit = git_commit()  # the code this run uses, read before anything can change
    torch.set_num_threads(max(1, args.threads))
    clock = CLOCKS[args.clock]
    for name, values in (("--ks", args.ks), ("--ps", args.ps), ("--ns", args.ns)):
        if min(values) < 1:
            raise ValueError(f"{name} must be positive integers, got {values}.")
    if min(args.ns) < 2:
        raise ValueError(f"--ns needs at least 2 time points, got {args.ns}.")

    source, target = TASKS[args.task]
    eval_rng = np.random.default_rng(args.seed + 1000)
    floor = wasserstein(target(args.n_eval, eval_rng), target(args.n_eval, eval_rng), max_cells=args.n_eval)
    real = target(args.n_eval, eval_rng)
    x0_test = source(args.n_eval, eval_rng)
    val_rng = np.random.default_rng(args.seed + 2000)
    x0_val, real_val = source(args.n_eval, val_rng), target(args.n_eval, val_rng)

    def w2(x: np.ndarray, y: np.ndarray) -> float:
        return wasserstein(x, y, max_cells=args.n_eval)

    rows, sweep = [], []
    wall0 = time.perf_counter()
    for config in configurations(args):
        run_args = argparse.Namespace(**{**vars(args), **{k: config[k] for k in DEFAULTS}})
        t0 = time.perf_counter()
        module, info = train_calmflow(source, target, args.budget, args.seed, run_args, clock=clock)
        train_wall = time.perf_counter() - t0
        module.eval()
        val = {t: w2(generate(module, x0_val, t, run_args), real_val) for t in args.select_temperatures}
        best_t = min(val, key=val.get)
        t0 = time.perf_counter()
        sample = generate(module, x0_test, best_t, run_args)
        sample_seconds = time.perf_counter() - t0
        value = w2(sample, real)
        row = {
            **config,
            "steps": info["steps"],
            "train_seconds": info["train_seconds"],
            "train_wall_seconds": train_wall,
            "final_loss": info["final_loss"],
            "validation_w2_by_temperature": val,
            "temperature": best_t,
            "sample_seconds": sample_seconds,
            "w2": value,
            "w2_over_floor": value / floor,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        if config["factor"] == "default":
            for t in args.temperatures:
                v = w2(generate(module, x0_test, t, run_args), real)
                sweep.append({"temperature": t, "w2": v, "w2_over_floor": v / floor})
            print("temperature sweep", json.dumps(sweep), flush=True)

    results = {
        "benchmark": "toy2d_ablations",
        "command": "python benchmarks/toy2d_ablations.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "seed": args.seed,
        "git_commit": commit,
        "task": args.task,
        "budget_seconds_per_config": args.budget,
        "budget": f"{args.budget:g} {args.clock} seconds of training per configuration, "
        f"{args.batch_size} points per step",
        "defaults": {
            **DEFAULTS,
            "backbone": args.backbone,
            "lr": args.lr,
            "batch_size": args.batch_size,
            "pairing": args.pairing,
            "schedule": "50-step linear warm-up, cosine decay to 5% over the time budget",
        },
        "metric": f"exact W2 (calmflow_sc.tl.wasserstein, POT emd2), {args.n_eval} generated vs {args.n_eval} fresh "
        "target samples; temperature per configuration chosen on a validation draw among "
        f"{args.select_temperatures}",
        "floor_w2": floor,
        "floor": f"W2 between two independent {args.n_eval}-sample target draws",
        "configs": rows,
        "temperature_sweep": sweep,
    }
    results["wall_seconds"] = time.perf_counter() - wall0
    results["best"] = min(rows, key=lambda r: r["w2"])["factor"] if rows else None
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "toy2d_ablations.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "toy2d_ablations.md").write_text(to_markdown(results))
    return results


def to_markdown(results: dict) -> str:
    """Render the ablation results as Markdown.

    Parameters
    ----------
    results
        The dict returned by :func:`main`.

    Returns
    -------
    Markdown text.
    """
    d = results["defaults"]
    lines = [
        f"# Toy 2-D ablations ({results['task']})",
        "",
        f"Command: `{results['command']}` (code at commit {results['git_commit']})  ",
        f"Machine: {results['machine']}, Python {results['python']}, torch {results['torch']}; seed {results['seed']}; "
        f"total wall time {results['wall_seconds']:.0f} s.  ",
        f"Budget: {results['budget']} (equal for every configuration).  ",
        f"Defaults (toy2d's): K={d['k']}, P={d['p']}, N={d['n']}, beta={d['beta']:g}, "
        f"{d['backbone']}, lr {d['lr']:g}, {d['pairing']} pairing, {d['schedule']}.  ",
        f"Metric: {results['metric']}.  ",
        f"Floor ({results['floor']}): **{results['floor_w2']:.3f}**.",
        "",
    ]
    default = next((r for r in results["configs"] if r["factor"] == "default"), None)
    for factor, title in FACTORS.items():
        part = [r for r in results["configs"] if r["factor"] in (factor, "default")]
        if len(part) < 2:
            continue
        part.sort(key=lambda r: r[factor])
        lines += [
            f"## {title}",
            "",
            f"| {factor.upper() if factor != 'beta' else 'beta'} | W2 (x floor) | steps in budget | final loss "
            "| temperature (validation) |",
            "|---|---|---|---|---|",
        ]
        for r in part:
            mark = " (default)" if r is default else ""
            lines.append(
                f"| {r[factor]:g}{mark} | {r['w2']:.3f} ({r['w2_over_floor']:.2f}x) | {r['steps']} | "
                f"{r['final_loss']:.3f} | {r['temperature']:g} |"
            )
        lines.append("")
    if results["temperature_sweep"]:
        lines += [
            "## Sampling temperature (default model, test draw; a sweep, not tuned)",
            "",
            "| temperature | W2 (x floor) |",
            "|---|---|",
        ]
        lines += [
            f"| {s['temperature']:g} | {s['w2']:.3f} ({s['w2_over_floor']:.2f}x) |"
            for s in results["temperature_sweep"]
        ]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
