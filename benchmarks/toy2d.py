"""Toy 2-D benchmark: CaLMFlow vs conditional flow matching at equal wall-clock budget.

Tasks (as in the CaLMFlow paper, definitions from torchcfm):
  * noise -> 8 Gaussians (radius 5),
  * 8 Gaussians -> 2 moons (noise 0.2).
Metric: exact 2-Wasserstein distance (POT ``emd2`` on squared Euclidean cost, then sqrt) between
1,000 generated samples and 1,000 fresh target samples; the noise floor is the same distance
between two independent 1,000-sample target draws.

Run: ``python benchmarks/toy2d.py [--budget 90] [--seed 0]`` (``make bench``).
Writes ``benchmarks/results/toy2d.json`` and ``toy2d.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import ot
import torch

from _common import git_commit
from calmflow_sc.baselines import VelocityField, cfm_loss, cfm_sample
from calmflow_sc.datasets import eight_gaussians, standard_normal, two_moons
from calmflow_sc.module import CaLMFlowModule, minibatch_ot_permutation

RESULTS = Path(__file__).resolve().parent / "results"

TASKS = {
    "noise->8gaussians": (lambda n, rng: standard_normal(n, 2, seed=rng), lambda n, rng: eight_gaussians(n, seed=rng)),
    "8gaussians->moons": (lambda n, rng: eight_gaussians(n, seed=rng), lambda n, rng: two_moons(n, seed=rng)),
}


def w2(a: np.ndarray, b: np.ndarray) -> float:
    """Exact 2-Wasserstein distance between two equal-weight point clouds."""
    cost = ot.dist(a.astype(np.float64), b.astype(np.float64), metric="sqeuclidean")
    return float(np.sqrt(ot.emd2(np.full(len(a), 1 / len(a)), np.full(len(b), 1 / len(b)), cost, numItermax=10**7)))


def lr_factor(elapsed: float, budget: float, step: int, warmup_steps: int = 50, floor: float = 0.05) -> float:
    """Linear warm-up over the first steps, then cosine decay over the wall-clock budget to ``floor``."""
    frac = min(1.0, elapsed / budget)
    return min(1.0, (step + 1) / warmup_steps) * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * frac)))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def train_calmflow(
    sample_source, sample_target, budget: float, seed: int, args, dim: int = 2, clock=time.perf_counter
) -> tuple[CaLMFlowModule, dict]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    module = CaLMFlowModule(
        dim,
        args.backbone,
        n_spatial_tokens=args.k,
        n_trajectories=args.p,
        n_time_points=args.n,
        beta=args.beta,
        dropout=0.0,
    )
    opt = torch.optim.AdamW(module.parameters(), lr=args.lr, weight_decay=0.01)
    steps, start, losses = 0, clock(), []
    module.train()
    while (elapsed := clock() - start) < budget:
        set_lr(opt, args.lr * lr_factor(elapsed, budget, steps))
        b = args.batch_size // args.p
        x0 = torch.from_numpy(sample_source(b * args.p, rng))
        x1 = torch.from_numpy(sample_target(b * args.p, rng))
        if args.pairing == "ot":
            x0 = x0[minibatch_ot_permutation(x0, x1)]
        out = module.loss(x0.view(b, args.p, dim), x1.view(b, args.p, dim))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
        steps += 1
        losses.append(out.loss.item())
    return module, {
        "steps": steps,
        "train_seconds": clock() - start,
        "final_loss": float(np.mean(losses[-50:])),
    }


def generate(module: CaLMFlowModule, x0: np.ndarray, temperature: float, args) -> np.ndarray:
    """Roll out CaLMFlow from sources ``x0`` in sequences of P (the last one padded with repeats)."""
    p = args.p
    n_seq = int(np.ceil(len(x0) / p))
    padded = np.concatenate([x0, x0[: n_seq * p - len(x0)]])
    gen = torch.Generator().manual_seed(args.seed)
    dim = x0.shape[1]
    out = module.sample(torch.from_numpy(padded).view(n_seq, p, dim), temperature=temperature, generator=gen)
    return out.reshape(-1, dim)[: len(x0)].numpy()


def train_cfm(
    sample_source, sample_target, budget: float, seed: int, args, dim: int = 2, clock=time.perf_counter
) -> tuple[VelocityField, dict]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    field = VelocityField(dim, hidden=256, n_layers=3)
    opt = torch.optim.Adam(field.parameters(), lr=args.cfm_lr)
    steps, start, losses = 0, clock(), []
    while (elapsed := clock() - start) < budget:
        set_lr(opt, args.cfm_lr * lr_factor(elapsed, budget, steps))
        x0 = torch.from_numpy(sample_source(args.batch_size, rng))
        x1 = torch.from_numpy(sample_target(args.batch_size, rng))
        loss = cfm_loss(field, x0, x1, ot_pairing=args.pairing == "ot")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
        losses.append(loss.item())
    return field, {
        "steps": steps,
        "train_seconds": clock() - start,
        "final_loss": float(np.mean(losses[-50:])),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=120.0, help="training seconds per model and task")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-eval", type=int, default=1000)
    parser.add_argument("--backbone", default="gpt-neox-mini")
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument("--p", type=int, default=8)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--beta", type=float, default=0.001)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument(
        "--temperatures",
        type=float,
        nargs="+",
        default=[0.0, 0.25, 0.5, 1.0],
        help="sampling temperatures; the one with the lowest W2 on a validation draw is used on the test draw",
    )
    parser.add_argument("--cfm-lr", type=float, default=1e-3)
    parser.add_argument(
        "--pairing",
        choices=["independent", "ot"],
        default="ot",
        help="pairing of sources and targets in a minibatch, for both models (the paper: independent for CaLMFlow)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch CPU threads (use 1 when the cores are shared: oversubscription slows these small models badly)",
    )
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    commit = git_commit()  # the code this run uses, read before anything can change
    torch.set_num_threads(max(1, args.threads))

    results = {
        "benchmark": "toy2d",
        "command": "python benchmarks/toy2d.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads".strip(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "seed": args.seed,
        "git_commit": commit,
        "budget_seconds_per_model": args.budget,
        "calmflow_settings": {
            "backbone": args.backbone,
            "K": args.k,
            "P": args.p,
            "N": args.n,
            "beta": args.beta,
            "temperatures": args.temperatures,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "schedule": "50-step linear warm-up, cosine decay to 5% over the time budget",
            "pairing": args.pairing,
        },
        "cfm_settings": {
            "hidden": 256,
            "layers": 3,
            "pairing": args.pairing,
            "batch_size": args.batch_size,
            "lr": args.cfm_lr,
            "schedule": "same as CaLMFlow",
            "solver": "dopri5 atol=rtol=1e-4",
        },
        "metric": "exact W2 (POT emd2, sqeuclidean cost, sqrt), 1,000 generated vs 1,000 fresh target samples",
        "tasks": {},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    wall0 = time.perf_counter()
    for name in args.tasks:
        source, target = TASKS[name]
        eval_rng = np.random.default_rng(args.seed + 1000)
        floor = w2(target(args.n_eval, eval_rng), target(args.n_eval, eval_rng))
        real = target(args.n_eval, eval_rng)
        x0_eval = source(args.n_eval, eval_rng)

        module, cal_info = train_calmflow(source, target, args.budget, args.seed, args)

        # temperature chosen on a validation draw (fresh sources and targets), never on the test draw
        val_rng = np.random.default_rng(args.seed + 2000)
        x0_val, real_val = source(args.n_eval, val_rng), target(args.n_eval, val_rng)
        val_w2 = {t: w2(generate(module, x0_val, t, args), real_val) for t in args.temperatures}
        best_t = min(val_w2, key=val_w2.get)
        cal_info["validation_w2_by_temperature"] = val_w2
        cal_info["temperature"] = best_t
        t0 = time.perf_counter()
        cal = generate(module, x0_eval, best_t, args)
        cal_info["sample_seconds"] = time.perf_counter() - t0
        cal_w2 = w2(cal, real)

        field, cfm_info = train_cfm(source, target, args.budget, args.seed, args)
        t0 = time.perf_counter()
        cfm = cfm_sample(field, torch.from_numpy(x0_eval)).numpy()
        cfm_info["sample_seconds"] = time.perf_counter() - t0
        cfm_w2 = w2(cfm, real)
        results["tasks"][name] = {
            "noise_floor_w2": floor,
            "calmflow_w2": cal_w2,
            "cfm_w2": cfm_w2,
            "calmflow_over_floor": cal_w2 / floor,
            "cfm_over_floor": cfm_w2 / floor,
            "calmflow_over_cfm": cal_w2 / cfm_w2,
            "calmflow": cal_info,
            "cfm": cfm_info,
        }
        print(name, json.dumps(results["tasks"][name], indent=1), flush=True)
        np.savez(args.out / f"toy2d_{name.replace('->', '_to_')}_samples.npz", calmflow=cal, cfm=cfm, real=real)
    results["wall_seconds"] = time.perf_counter() - wall0
    results["target_met"] = all(t["calmflow_over_floor"] <= 2.0 for t in results["tasks"].values())
    (args.out / "toy2d.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "toy2d.md").write_text(to_markdown(results))
    return results


def to_markdown(results: dict) -> str:
    lines = [
        "# Toy 2-D: CaLMFlow vs CFM at equal wall-clock",
        "",
        f"Command: `{results['command']}` (code at commit {results['git_commit']})  ",
        f"Machine: {results['machine']}, Python {results['python']}, torch {results['torch']}; "
        f"seed {results['seed']}; {results['budget_seconds_per_model']:.0f} s training per model and task; "
        f"total wall time {results['wall_seconds']:.0f} s.  ",
        f"Metric: {results['metric']}.  ",
        f"CaLMFlow: {results['calmflow_settings']}.  ",
        f"CFM: {results['cfm_settings']}.",
        "",
        "| task | noise floor W2 | CaLMFlow W2 (x floor) | CFM W2 (x floor) | CaLMFlow / CFM "
        "| CaLMFlow steps (temperature) | CFM steps |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, t in results["tasks"].items():
        lines.append(
            f"| {name} | {t['noise_floor_w2']:.3f} | {t['calmflow_w2']:.3f} ({t['calmflow_over_floor']:.2f}x) | "
            f"{t['cfm_w2']:.3f} ({t['cfm_over_floor']:.2f}x) | {t['calmflow_over_cfm']:.2f} | "
            f"{t['calmflow']['steps']} (T={t['calmflow']['temperature']:g}) | {t['cfm']['steps']} |"
        )
    lines += ["", f"Target (CaLMFlow W2 <= 2x noise floor on both tasks) met: **{results['target_met']}**.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
