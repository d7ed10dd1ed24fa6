"""High-dimensional Gaussian mixtures: CaLMFlow vs conditional flow matching at equal wall-clock (the paper's Table 1).

Task, per dimension D (100 and 1,000 by default): transport a source mixture onto a target mixture.
  * Source: 2 equally weighted isotropic Gaussians, standard deviation 1 per coordinate.
  * Target: 4 equally weighted isotropic Gaussians, standard deviation 0.5 per coordinate.
  * Component means: independent N(0, I_D) draws (fixed by ``--seed``), so two means lie about
    sqrt(2 D) apart while two points of one target component lie about 0.5 sqrt(2 D) apart: the
    modes are separated in every dimension count.
Models (module level, as ``benchmarks/toy2d.py``): CaLMFlow (``CaLMFlowModule``, toy2d's defaults:
gpt-neox-mini, K=1, P=8, N=16, beta=1e-3, OT pairing; sampling temperature chosen on a validation draw)
and CFM (``calmflow_sc.baselines`` MLP velocity field, 3 x 256, OT pairing, dopri5), each trained for the
same time budget with 512 points per step: ``--budget`` CPU seconds of this process with one torch thread
(``--clock cpu``, the default: the compute each model received, robust to other jobs on a shared machine),
or wall-clock seconds (``--clock wall``).
Metrics on 1,000 generated vs 1,000 fresh target samples: MMD^2 (``calmflow_sc.tl.mmd``, RBF widths
0.5/1/2 x pooled median distance) and exact 2-Wasserstein (``calmflow_sc.tl.wasserstein``). Floor: the
same metrics between two independent 1,000-sample target draws; "source" scores the untransported
source samples (the do-nothing reference).

Run: ``python benchmarks/highdim.py [--dims 100 1000] [--budget 120] [--threads 1]`` (``make bench``).
Writes ``benchmarks/results/highdim.json`` and ``.md``.
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
from calmflow_sc.baselines import cfm_sample
from calmflow_sc.tl import mmd, wasserstein
from toy2d import generate, train_calmflow, train_cfm

RESULTS = Path(__file__).resolve().parent / "results"
CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


class GaussianMixture:
    """Equally weighted isotropic Gaussian mixture with N(0, I) component means.

    Parameters
    ----------
    n_components
        Number of components.
    dim
        Dimension.
    std
        Standard deviation of every coordinate within a component.
    seed
        Seed of the component means.
    """

    def __init__(self, n_components: int, dim: int, std: float, seed: int) -> None:
        if n_components < 1 or dim < 1 or std <= 0:
            raise ValueError(f"need n_components >= 1, dim >= 1, std > 0; got {n_components}, {dim}, {std}.")
        self.means = np.random.default_rng(seed).standard_normal((n_components, dim)).astype(np.float32)
        self.std = float(std)

    def __call__(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Draw ``n`` points (float32, ``(n, dim)``) with generator ``rng``."""
        labels = rng.integers(len(self.means), size=n)
        noise = rng.standard_normal((n, self.means.shape[1])).astype(np.float32)
        return self.means[labels] + self.std * noise


def scores(x: np.ndarray, y: np.ndarray) -> dict:
    """MMD^2 and exact W2 between two equal-size sample sets."""
    return {"mmd": mmd(x, y), "w2": wasserstein(x, y, max_cells=max(len(x), len(y)))}


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; return the results dict also written to JSON/Markdown.

    Parameters
    ----------
    argv
        Command-line arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    The results (settings and, per dimension, floor, source, CaLMFlow and CFM scores).
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", type=int, nargs="+", default=[100, 1000])
    parser.add_argument(
        "--budget", type=float, default=120.0, help="training seconds (see --clock) per model and dimension"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-eval", type=int, default=1000)
    parser.add_argument("--source-components", type=int, default=2)
    parser.add_argument("--target-components", type=int, default=4)
    parser.add_argument("--backbone", default="gpt-neox-mini")
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument("--p", type=int, default=8)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--beta", type=float, default=0.001)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--cfm-lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--pairing", choices=["independent", "ot"], default="ot")
    parser.add_argument(
        "--temperatures",
        type=float,
        nargs="+",
        default=[0.0, 0.5, 1.0],
        help="CaLMFlow sampling temperatures; the one with the lowest W2 on a validation draw is used",
    )
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
    if min(args.dims) < 1:
        raise ValueError(f"--dims must be positive, got {args.dims}.")
    if args.batch_size % args.p:
        raise ValueError(f"--batch-size ({args.batch_size}) must be a multiple of --p ({args.p}).")
    torch.set_num_threads(max(1, args.threads))
    clock = CLOCKS[args.clock]

    results = {
        "benchmark": "highdim",
        "command": "python benchmarks/highdim.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "seed": args.seed,
        "git_commit": commit,
        "budget_seconds_per_model": args.budget,
        "clock": args.clock,
        "task": f"source: {args.source_components} isotropic Gaussians (std 1), target: {args.target_components} "
        "isotropic Gaussians (std 0.5), equal weights, component means N(0, I_D)",
        "calmflow_settings": {
            "backbone": args.backbone,
            "K": args.k,
            "P": args.p,
            "N": args.n,
            "beta": args.beta,
            "lr": args.lr,
            "batch_size": args.batch_size,
            "pairing": args.pairing,
            "temperatures": args.temperatures,
            "schedule": "50-step linear warm-up, cosine decay to 5% over the time budget",
        },
        "cfm_settings": {
            "hidden": 256,
            "layers": 3,
            "lr": args.cfm_lr,
            "batch_size": args.batch_size,
            "pairing": args.pairing,
            "solver": "dopri5 atol=rtol=1e-4",
        },
        "metrics": {
            "mmd": "MMD^2, RBF widths 0.5/1/2 x pooled median distance (calmflow_sc.tl.mmd; lower is better)",
            "w2": "exact 2-Wasserstein, POT emd2 on squared Euclidean cost, sqrt (calmflow_sc.tl.wasserstein; "
            "lower is better)",
        },
        "n_eval": args.n_eval,
        "dims": {},
    }
    wall0 = time.perf_counter()
    for dim in args.dims:
        source = GaussianMixture(args.source_components, dim, 1.0, seed=args.seed * 7919 + dim)
        target = GaussianMixture(args.target_components, dim, 0.5, seed=args.seed * 7919 + dim + 1)
        eval_rng = np.random.default_rng(args.seed + 1000)
        floor = scores(target(args.n_eval, eval_rng), target(args.n_eval, eval_rng))
        real = target(args.n_eval, eval_rng)
        x0 = source(args.n_eval, eval_rng)
        val_rng = np.random.default_rng(args.seed + 2000)
        x0_val, real_val = source(args.n_eval, val_rng), target(args.n_eval, val_rng)

        module, cal_info = train_calmflow(source, target, args.budget, args.seed, args, dim=dim, clock=clock)
        module.eval()
        val = {
            t: wasserstein(generate(module, x0_val, t, args), real_val, max_cells=args.n_eval)
            for t in args.temperatures
        }
        cal_info["validation_w2_by_temperature"] = val
        cal_info["temperature"] = min(val, key=val.get)
        t0 = time.perf_counter()
        cal = generate(module, x0, cal_info["temperature"], args)
        cal_info["sample_seconds"] = time.perf_counter() - t0
        del module

        field, cfm_info = train_cfm(source, target, args.budget, args.seed, args, dim=dim, clock=clock)
        t0 = time.perf_counter()
        cfm = cfm_sample(field, torch.from_numpy(x0)).numpy()
        cfm_info["sample_seconds"] = time.perf_counter() - t0

        entry = {
            "floor": floor,
            "source": scores(x0, real),
            "calmflow": {**scores(cal, real), **cal_info},
            "cfm": {**scores(cfm, real), **cfm_info},
        }
        for model in ("source", "calmflow", "cfm"):
            for metric in ("mmd", "w2"):
                entry[model][f"{metric}_over_floor"] = entry[model][metric] / floor[metric] if floor[metric] else None
        results["dims"][str(dim)] = entry
        print(dim, json.dumps(entry, default=float), flush=True)
    results["wall_seconds"] = time.perf_counter() - wall0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "highdim.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    (args.out / "highdim.md").write_text(to_markdown(results))
    return results


def _ratio(value: float | None) -> str:
    return "" if value is None else f" ({value:.2f}x)"


def to_markdown(results: dict) -> str:
    """Render the results as Markdown.

    Parameters
    ----------
    results
        The dict returned by :func:`main`.

    Returns
    -------
    Markdown text.
    """
    lines = [
        "# High-dimensional Gaussian mixtures: CaLMFlow vs CFM at equal training time",
        "",
        f"Command: `{results['command']}` (code at commit {results['git_commit']})  ",
        f"Machine: {results['machine']}, Python {results['python']}, torch {results['torch']}; seed {results['seed']}; "
        f"{results['budget_seconds_per_model']:g} {results['clock']} seconds of training per model and dimension; "
        f"total wall time {results['wall_seconds']:.0f} s.  ",
        f"Task: {results['task']}.  ",
        f"CaLMFlow: {results['calmflow_settings']}.  ",
        f"CFM: {results['cfm_settings']}.  ",
        f"Metrics ({results['n_eval']} generated vs {results['n_eval']} fresh target samples): "
        + "; ".join(f"`{k}`: {v}" for k, v in results["metrics"].items())
        + ". Floor: two independent target draws. Source: the untransported source samples.",
        "",
        "| D | model | MMD^2 (x floor) | W2 (x floor) | training steps | temperature |",
        "|---|---|---|---|---|---|",
    ]
    for dim, entry in results["dims"].items():
        f = entry["floor"]
        lines.append(f"| {dim} | floor (target vs target) | {f['mmd']:.4f} | {f['w2']:.3f} | | |")
        for model, label in (("source", "source (no transport)"), ("calmflow", "CaLMFlow"), ("cfm", "CFM")):
            e = entry[model]
            temp = f"{e['temperature']:g}" if "temperature" in e else ""
            lines.append(
                f"| {dim} | {label} | {e['mmd']:.4f}{_ratio(e['mmd_over_floor'])} | "
                f"{e['w2']:.3f}{_ratio(e['w2_over_floor'])} | {e.get('steps', '')} | {temp} |"
            )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
