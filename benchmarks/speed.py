"""Speed of CaLMFlow on this CPU: KV-cached sampling, training throughput, options, CFM sampling.

Everything is measured side by side in one run; every claim is a ratio of two timings taken here.

1. Sampling with the key/value cache vs the paper's re-encode-every-step roll-out (N=16, K=5, P=4,
   1,000 cells, gpt-neox-small, 50 PCA-like dimensions, a 12-token prompt), the outputs of both
   compared element-wise (same generator seed), and vs one teacher-forced forward pass over the
   same full sequences (the floor: every token through the backbone once).
2. Training throughput (cells/s) of the default ``CaLMFlowModel`` through ``model.train`` on a
   synthetic sparse screen (steady-state steps, timed by a Lightning callback), with a cProfile
   breakdown of where the time goes.
3. Options: ``precision="bf16-mixed"`` (a Lightning trainer argument) for training, bf16 autocast for
   sampling, and ``torch.compile`` of the module's loss.
4. Sampling vs the CFM baseline's ODE solve on the toy 2-D task noise -> 8 Gaussians (both trained
   for the same wall-clock time): throughput and exact W2 for CFM at several solvers / step counts,
   and the cheapest CFM setting whose W2 is at least as good as CaLMFlow's (matched quality).

Run: ``python benchmarks/speed.py [--seed 0] [--threads 1]``
Writes ``benchmarks/results/speed.json`` and ``speed.md``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import logging
import pstats
import sys
import time
import warnings
from argparse import Namespace
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch

import calmflow_sc as cf
from _common import git_commit, machine, synthetic_screen_chunk
from calmflow_sc.baselines import cfm_sample
from calmflow_sc.module import CaLMFlowModule

RESULTS = Path(__file__).resolve().parent / "results"
QUIET = dict(enable_progress_bar=False, enable_model_summary=False, logger=False, enable_checkpointing=False)


def best_of(fn, repeats: int) -> tuple[float, object]:
    """Minimum wall time of ``repeats`` calls (and the last result)."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


# --------------------------------------------------------------------------- 1. KV cache
def bench_cache(k: int, n_cells: int, repeats: int, seed: int) -> dict:
    torch.manual_seed(seed)
    p, n_steps, d, prompt_len = 4, 16, 50, 12
    module = CaLMFlowModule(d, "gpt-neox-small", n_spatial_tokens=k, n_trajectories=p, n_time_points=n_steps).eval()
    n_seq = n_cells // p
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n_seq, p, d, generator=gen)
    ids = torch.randint(1, 60, (n_seq, prompt_len), generator=gen)
    mask = torch.ones_like(ids)

    def sample(use_cache: bool) -> torch.Tensor:
        return module.sample(
            x0,
            ids,
            mask,
            temperature=1.0,
            use_cache=use_cache,
            generator=torch.Generator().manual_seed(seed),
            return_trajectory=True,
        )

    paths = module.make_paths(x0, torch.randn(n_seq, p, d, generator=gen))

    def teacher_forced() -> None:
        with torch.no_grad():
            module(paths, ids, mask, temperature=1.0, generator=torch.Generator().manual_seed(seed))

    cached, reencode, forward = [], [], []
    for _ in range(repeats):  # interleaved, so load changes on a shared machine hit all three alike
        t, out_cached = best_of(lambda: sample(True), 1)
        cached.append(t)
        t, out_reencode = best_of(lambda: sample(False), 1)
        reencode.append(t)
        forward.append(best_of(teacher_forced, 1)[0])
    diff = float((out_cached - out_reencode).abs().max())
    scale = float(out_reencode.abs().max())
    res = {
        "K": k,
        "P": p,
        "N": n_steps,
        "D": d,
        "prompt_tokens": prompt_len,
        "n_cells": n_seq * p,
        "tokens_per_sequence": prompt_len + (n_steps - 1) * p * k,
        "cached_seconds": min(cached),
        "reencode_seconds": min(reencode),
        "teacher_forced_seconds": min(forward),
        "all_cached_seconds": cached,
        "all_reencode_seconds": reencode,
        "all_teacher_forced_seconds": forward,
        "max_abs_difference": diff,
        "max_abs_value": scale,
        "identical_within_1e-4_relative": bool(diff <= 1e-4 * max(scale, 1.0)),
    }
    res["speedup_cache_vs_reencode"] = res["reencode_seconds"] / res["cached_seconds"]
    res["cached_over_teacher_forced"] = res["cached_seconds"] / res["teacher_forced_seconds"]
    return res


def profile_sampling(n_cells: int, seed: int) -> str:
    """cProfile of one cached roll-out (K=5), top functions by own time."""
    torch.manual_seed(seed)
    module = CaLMFlowModule(50, "gpt-neox-small", n_spatial_tokens=5, n_trajectories=4, n_time_points=16).eval()
    x0 = torch.randn(n_cells // 4, 4, 50)
    ids = torch.randint(1, 60, (n_cells // 4, 12))
    prof = cProfile.Profile()
    prof.enable()
    module.sample(x0, ids, torch.ones_like(ids), generator=torch.Generator().manual_seed(seed))
    prof.disable()
    return _top(prof, 12)


def _top(prof: cProfile.Profile, n: int) -> str:
    stream = io.StringIO()
    pstats.Stats(prof, stream=stream).sort_stats("tottime").print_stats(n)
    lines = [ln for ln in stream.getvalue().splitlines() if ln.strip()]
    start = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls"))
    return "\n".join(lines[start : start + n + 1])


# ------------------------------------------------------------------------ 2. training
class StepTimer:
    """Lightning callback: wall time of training steps after a warm-up."""

    def __new__(cls, warmup: int):
        from lightning.pytorch.callbacks import Callback

        class _Timer(Callback):
            def __init__(self) -> None:
                self.warmup, self.t0, self.t1, self.steps, self.cells = warmup, None, None, 0, 0

            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                if trainer.global_step == self.warmup and self.t0 is None:
                    self.t0 = time.perf_counter()

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                if self.t0 is not None:
                    self.t1 = time.perf_counter()
                    self.steps += 1
                    self.cells += int(batch["X"].shape[0])

        return _Timer()


def screen(n_cells: int, n_genes: int, seed: int) -> ad.AnnData:
    x, obs = synthetic_screen_chunk(range(n_cells), n_genes, density=0.1, seed=seed)
    return ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=[f"gene{i}" for i in range(n_genes)]))


def train_once(adata: ad.AnnData, steps: int, warmup: int, seed: int, profile: bool = False, **train_kwargs) -> dict:
    import scvi

    scvi.settings.seed = seed
    model = cf.CaLMFlowModel(adata)  # the default model
    timer = StepTimer(warmup)
    prof = cProfile.Profile() if profile else None
    t0 = time.perf_counter()
    if prof:
        prof.enable()
    model.train(max_steps=warmup + steps, batch_size=128, seed=seed, callbacks=[timer], **QUIET, **train_kwargs)
    if prof:
        prof.disable()
    total = time.perf_counter() - t0
    res = {
        "timed_steps": timer.steps,
        "cells_per_second": timer.cells / (timer.t1 - timer.t0),
        "seconds_per_step": (timer.t1 - timer.t0) / timer.steps,
        "train_call_seconds": total,
        "final_train_loss": float(model.history["train_loss_epoch"].iloc[-1, 0])
        if "train_loss_epoch" in model.history
        else None,
    }
    if prof:
        res["breakdown"], res["top"] = _training_breakdown(prof, total), _top(prof, 15)
    return res


def _training_breakdown(prof: cProfile.Profile, total: float) -> dict:
    """Cumulative seconds of the parts of a training step (under cProfile, which inflates Python parts)."""
    stats = pstats.Stats(prof).stats  # {(file, line, name): (cc, nc, tt, ct, callers)}

    def cumulative(file_part: str, name: str) -> float:
        return sum(v[3] for (f, _, n), v in stats.items() if file_part in f and n == name)

    parts = {
        "data loading (scvi AnnTorchDataset.__getitem__, sparse rows -> dense batch)": cumulative(
            "_anntorchdataset", "__getitem__"
        ),
        "PCA projection of the batch": cumulative("_training_plan", "_coordinates"),
        "grouping into sequences": cumulative("sequences", "group_into_sequences"),
        "source coupling (per-condition exact OT, once per epoch)": cumulative("coupling", "resample"),
        "module forward + loss (of which backbone below)": cumulative("module/calmflow", "loss"),
        "  backbone forward": cumulative("module/calmflow", "_run_backbone"),
        "backward": cumulative("torch/autograd/__init__", "backward"),
        "optimizer step (AdamW)": cumulative("torch/optim/adam", "_single_tensor_adam")
        + cumulative("torch/optim/adam", "_multi_tensor_adam"),
        "PCA fit + control pool (before the first step)": cumulative("_model", "_record_training_conditions")
        + cumulative("representation", "fit"),
    }
    parts = {k: round(v, 3) for k, v in parts.items()}
    parts["whole train() call"] = round(total, 3)
    return parts


# ------------------------------------------------------------------------- 3. options
def bench_compile(steps: int, seed: int) -> dict:
    """Eager vs torch.compile of the module's loss + backward (default model sizes, batch of 32 sequences)."""
    torch.manual_seed(seed)
    module = CaLMFlowModule(50, "gpt-neox-small", n_trajectories=4, n_time_points=16, residual=True, beta=0.3)
    opt = torch.optim.AdamW(module.parameters(), lr=1e-4)
    x0, x1 = torch.randn(32, 4, 50), torch.randn(32, 4, 50)
    ids = torch.randint(1, 60, (32, 12))
    mask = torch.ones_like(ids)

    def step(fn) -> None:
        loss = fn(x0, x1, ids, mask).loss
        opt.zero_grad()
        loss.backward()
        opt.step()

    eager = best_of(lambda: [step(module.loss) for _ in range(steps)], 2)[0] / steps
    t0 = time.perf_counter()
    compiled = torch.compile(module.loss)
    try:
        step(compiled)  # compilation happens here
        first = time.perf_counter() - t0
        comp = best_of(lambda: [step(compiled) for _ in range(steps)], 2)[0] / steps
        return {
            "eager_seconds_per_step": eager,
            "compiled_seconds_per_step": comp,
            "compile_first_step_seconds": first,
            "speedup": eager / comp,
        }
    except Exception as err:  # report, do not hide: compile needs a working C++ toolchain on CPU
        return {"eager_seconds_per_step": eager, "error": f"{type(err).__name__}: {str(err)[:300]}"}


def bench_bf16_sampling(n_cells: int, repeats: int, seed: int) -> dict:
    torch.manual_seed(seed)
    module = CaLMFlowModule(50, "gpt-neox-small", n_spatial_tokens=1, n_trajectories=4, n_time_points=16).eval()
    x0 = torch.randn(n_cells // 4, 4, 50)
    ids = torch.randint(1, 60, (n_cells // 4, 12))
    mask = torch.ones_like(ids)

    def run(bf16: bool) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return module.sample(x0, ids, mask, generator=torch.Generator().manual_seed(seed)).float()

    fp32, bf16 = [], []
    for _ in range(repeats):
        t, a = best_of(lambda: run(False), 1)
        fp32.append(t)
        t, b = best_of(lambda: run(True), 1)
        bf16.append(t)
    return {
        "fp32_seconds": min(fp32),
        "bf16_seconds": min(bf16),
        "speedup": min(fp32) / min(bf16),
        "max_abs_difference": float((a - b).abs().max()),
        "max_abs_value": float(a.abs().max()),
    }


# ------------------------------------------------------------------------ 4. vs CFM
def bench_cfm(budget: float, seed: int, repeats: int) -> dict:
    import toy2d

    args = Namespace(
        backbone="gpt-neox-mini",
        k=1,
        p=8,
        n=16,
        beta=0.001,
        lr=3e-3,
        batch_size=512,
        pairing="ot",
        cfm_lr=1e-3,
        seed=seed,
    )
    source, target = toy2d.TASKS["noise->8gaussians"]
    module, cal_info = toy2d.train_calmflow(source, target, budget, seed, args)
    field, cfm_info = toy2d.train_cfm(source, target, budget, seed, args)
    val_rng, test_rng = np.random.default_rng(seed + 2000), np.random.default_rng(seed + 1000)
    x0_val, real_val = source(1000, val_rng), target(1000, val_rng)
    temps = [0.0, 0.25, 0.5, 1.0]
    val = {t: toy2d.w2(toy2d.generate(module, x0_val, t, args), real_val) for t in temps}
    temp = min(val, key=val.get)
    floor = toy2d.w2(target(1000, test_rng), target(1000, test_rng))
    real, x0 = target(1000, test_rng), source(1000, test_rng)
    t_cal, cal = best_of(lambda: toy2d.generate(module, x0, temp, args), repeats)
    res = {
        "task": "noise->8gaussians",
        "train_seconds_each": budget,
        "noise_floor_w2": floor,
        "calmflow": {
            "temperature": temp,
            "train_steps": cal_info["steps"],
            "seconds_1000": t_cal,
            "samples_per_second": 1000 / t_cal,
            "w2": toy2d.w2(cal, real),
        },
        "cfm_train_steps": cfm_info["steps"],
        "cfm": [],
    }
    x0_t = torch.from_numpy(x0)
    settings = (
        [("dopri5", 2, "atol=rtol=1e-4"), ("dopri5", 2, "atol=rtol=1e-2")]
        + [("euler", n + 1, f"{n} steps") for n in (2, 4, 8, 16, 32, 64)]
        + [("rk4", n + 1, f"{n} steps") for n in (2, 4, 8)]
    )
    for method, n_points, label in settings:
        res["cfm"].append(_time_cfm(field, x0_t, real, method, n_points, label, repeats))
    good = [c for c in res["cfm"] if c["w2"] <= res["calmflow"]["w2"]]
    res["matched"] = min(good, key=lambda c: c["seconds_1000"]) if good else None
    res["cfm_reference"] = res["cfm"][0]
    return res


def _time_cfm(field, x0: torch.Tensor, real: np.ndarray, method: str, n_points: int, label: str, repeats: int) -> dict:
    """Time one CFM solver setting and count its velocity evaluations."""
    import toy2d

    tol = 1e-2 if "1e-2" in label else 1e-4
    counter = {"n": 0}
    plain_forward = field.forward

    def counted(*args, **kwargs):
        counter["n"] += 1
        return plain_forward(*args, **kwargs)

    field.forward = counted
    try:
        t, out = best_of(lambda: cfm_sample(field, x0, method=method, n_steps=n_points, atol=tol, rtol=tol), repeats)
    finally:
        del field.forward
    return {
        "solver": method,
        "setting": label,
        "velocity_evaluations": counter["n"] // repeats,
        "seconds_1000": t,
        "samples_per_second": 1000 / t,
        "w2": toy2d.w2(out.numpy(), real),
    }


# ------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--n-cells", type=int, default=1000, help="cells sampled in the cache comparison")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=60, help="timed training steps (after 10 warm-up steps)")
    parser.add_argument("--train-cells", type=int, default=8000)
    parser.add_argument("--n-genes", type=int, default=2000)
    parser.add_argument("--cfm-budget", type=float, default=60.0, help="training seconds per model in the CFM part")
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    commit = git_commit()
    torch.set_num_threads(max(1, args.threads))
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    wall0 = time.perf_counter()
    results: dict = {
        "benchmark": "speed",
        "command": "python benchmarks/speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "seed": args.seed,
        "git_commit": commit,
    }
    print("1. KV cache", flush=True)
    results["cache"] = [bench_cache(k, args.n_cells, args.repeats, args.seed) for k in (5, 1)]
    results["sampling_profile"] = profile_sampling(args.n_cells, args.seed)
    print(json.dumps(results["cache"], indent=1), flush=True)

    print("2. training throughput", flush=True)
    adata = screen(args.train_cells, args.n_genes, args.seed)
    cf.CaLMFlowModel.setup_anndata(adata, perturbation_key="condition", context_keys=["cell_type"])
    warm = 10
    results["training_data"] = (
        f"synthetic screen {adata.n_obs} cells x {adata.n_vars} genes, CSR 10% dense, 31 conditions x 4 cell types"
    )
    results["training"] = {
        "fp32": train_once(adata, args.train_steps, warm, args.seed),
        "bf16-mixed": train_once(adata, args.train_steps, warm, args.seed, precision="bf16-mixed"),
    }
    results["training"]["bf16_speedup"] = (
        results["training"]["bf16-mixed"]["cells_per_second"] / results["training"]["fp32"]["cells_per_second"]
    )
    results["training_profiled"] = train_once(adata, args.train_steps, warm, args.seed, profile=True)
    print(json.dumps(results["training"], indent=1), flush=True)

    print("3. options", flush=True)
    results["bf16_sampling"] = bench_bf16_sampling(args.n_cells, args.repeats, args.seed)
    if not args.skip_compile:
        results["compile"] = bench_compile(10, args.seed)
        print(results["compile"], flush=True)

    print("4. vs CFM", flush=True)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    results["cfm"] = bench_cfm(args.cfm_budget, args.seed, args.repeats)
    results["wall_seconds"] = time.perf_counter() - wall0
    c5 = results["cache"][0]
    results["targets"] = {
        "cache_at_least_5x_faster_than_reencode (K=5)": c5["speedup_cache_vs_reencode"] >= 5,
        "cache_outputs_identical": all(c["identical_within_1e-4_relative"] for c in results["cache"]),
        "cache_at_most_2x_teacher_forced (K=5)": c5["cached_over_teacher_forced"] <= 2,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "speed.md").write_text(to_markdown(results))
    print(to_markdown(results))
    return results


def to_markdown(r: dict) -> str:
    lines = [
        "# Speed on CPU",
        "",
        f"Command: `{r['command']}` (code at commit {r['git_commit']})  ",
        f"Machine: {r['machine']}; Python {r['python']}, torch {r['torch']}; seed {r['seed']}; "
        f"total wall time {r['wall_seconds']:.0f} s. The cores are shared with other work, so absolute times "
        "vary between runs; each comparison below interleaves its contenders and reports the best of the repeats.",
        "",
        "## 1. Sampling: key/value cache vs re-encoding every step",
        "",
        "gpt-neox-small, D=50, P=4 trajectories per sequence, N=16 time points, 12 prompt tokens; same generator seed "
        "for both roll-outs, whole trajectories compared element-wise.",
        "",
        "| K | cells | tokens/sequence | cached (s) | re-encode (s) | speed-up | teacher-forced forward (s) "
        "| cached / forward | max abs difference |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in r["cache"]:
        lines.append(
            f"| {c['K']} | {c['n_cells']} | {c['tokens_per_sequence']} | {c['cached_seconds']:.2f} | "
            f"{c['reencode_seconds']:.2f} | **{c['speedup_cache_vs_reencode']:.1f}x** | "
            f"{c['teacher_forced_seconds']:.2f} | {c['cached_over_teacher_forced']:.2f} | "
            f"{c['max_abs_difference']:.1e} (values up to {c['max_abs_value']:.1f}) |"
        )
    lines += [
        "",
        "Targets: " + "; ".join(f"{k}: **{v}**" for k, v in r["targets"].items()) + ".",
        "",
        "Where one cached roll-out (K=5) spends its time (cProfile, own time):",
        "",
        "```",
        r["sampling_profile"],
        "```",
        "",
    ]
    t = r["training"]
    lines += [
        "## 2. Training throughput of the default model",
        "",
        f"`CaLMFlowModel(adata)` defaults (gpt-neox-small, 50 PCs, K=1, P=4, N=16, OT pairing, noise source), "
        f"`model.train(batch_size=128, max_steps=...)` on a {r['training_data']}; steady-state steps timed by a "
        "Lightning callback after 10 warm-up steps (data loading, batch preparation, forward, backward, optimizer "
        "and Lightning's own work all included).",
        "",
        "| precision | timed steps | s/step | cells/s |",
        "|---|---|---|---|",
    ]
    for name in ("fp32", "bf16-mixed"):
        lines.append(
            f"| {name} | {t[name]['timed_steps']} | {t[name]['seconds_per_step']:.3f} | "
            f"{t[name]['cells_per_second']:.0f} |"
        )
    lines += [
        "",
        f'bf16-mixed / fp32 throughput: **{t["bf16_speedup"]:.2f}x** (`model.train(precision="bf16-mixed")`'
        " works; this CPU has no native bf16 instructions).",
        "",
        "Where the time of one profiled `train()` call goes (cProfile cumulative seconds; the profiler inflates "
        "Python-heavy parts):",
        "",
        "| part | seconds |",
        "|---|---|",
    ]
    for k, v in r["training_profiled"]["breakdown"].items():
        lines.append(f"| {k} | {v:.2f} |")
    lines += ["", "Top functions by own time:", "", "```", r["training_profiled"]["top"], "```", ""]
    b = r["bf16_sampling"]
    lines += [
        "## 3. Options",
        "",
        f"- bf16 autocast for sampling (K=1, {r['cache'][1]['n_cells']} cells): fp32 {b['fp32_seconds']:.2f} s, "
        f"bf16 {b['bf16_seconds']:.2f} s, **{b['speedup']:.2f}x**; max abs difference of the final states "
        f"{b['max_abs_difference']:.2g} (values up to {b['max_abs_value']:.1f}).",
    ]
    if "compile" in r:
        c = r["compile"]
        if "error" in c:
            lines.append(f"- torch.compile of the loss: failed here ({c['error']}).")
        else:
            lines.append(
                f"- torch.compile of the module's loss (+ eager backward through the compiled graph, AdamW), "
                f"32 sequences: eager {c['eager_seconds_per_step'] * 1e3:.0f} ms/step, compiled "
                f"{c['compiled_seconds_per_step'] * 1e3:.0f} ms/step, **{c['speedup']:.2f}x**, after "
                f"{c['compile_first_step_seconds']:.0f} s of compilation."
            )
    f = r["cfm"]
    cal = f["calmflow"]
    lines += [
        "",
        "## 4. Sampling vs the CFM baseline's ODE solve (toy 2-D, noise -> 8 Gaussians)",
        "",
        f"Both trained for {f['train_seconds_each']:.0f} s (toy2d.py settings: CaLMFlow gpt-neox-mini, K=1, P=8, "
        f"N=16, OT pairing, temperature chosen on a validation draw; CFM MLP 3x256, OT pairing). 1,000 samples; "
        f"exact W2 against 1,000 fresh target samples (noise floor between two target draws: "
        f"{f['noise_floor_w2']:.3f}).",
        "",
        "| sampler | setting | network evaluations | s / 1,000 samples | samples/s | W2 |",
        "|---|---|---|---|---|---|",
        f"| CaLMFlow (KV cache) | T={cal['temperature']:g}, 15 steps | 15 (incremental) | {cal['seconds_1000']:.3f} | "
        f"{cal['samples_per_second']:.0f} | {cal['w2']:.3f} |",
    ]
    for c in f["cfm"]:
        lines.append(
            f"| CFM {c['solver']} | {c['setting']} | {c['velocity_evaluations']} | {c['seconds_1000']:.4f} | "
            f"{c['samples_per_second']:.0f} | {c['w2']:.3f} |"
        )
    m = f["matched"]
    if m:
        ratio = cal["seconds_1000"] / m["seconds_1000"]
        faster = "CFM" if ratio > 1 else "CaLMFlow"
        lines += [
            "",
            f"Matched quality: the cheapest CFM setting with W2 <= CaLMFlow's ({cal['w2']:.3f}) is "
            f"{m['solver']} {m['setting']} (W2 {m['w2']:.3f}); CaLMFlow time / that CFM time: "
            f"**{ratio:.1f}x**, so {faster} samples faster at (at least) equal quality. Quality is matched "
            "from one side: CFM settings are searched for the cheapest one at least as good as CaLMFlow at its "
            "validation-chosen temperature; CaLMFlow's 15 steps are fixed by its training grid.",
        ]
    else:
        lines += [
            "",
            f"No CFM setting reached CaLMFlow's W2 ({cal['w2']:.3f}); CaLMFlow / CFM dopri5 time: "
            f"{cal['seconds_1000'] / f['cfm_reference']['seconds_1000']:.1f}x at W2 "
            f"{cal['w2']:.3f} vs {f['cfm_reference']['w2']:.3f}.",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
