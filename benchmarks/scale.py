"""Scale: a 1,000,000-cell x 2,000-gene sparse screen trained straight from a backed .h5ad.

A synthetic screen (``_common.synthetic_screen_chunk``: CSR, log-normalised, 31 conditions x 4 cell
types, 10% controls) is written chunk by chunk to a temporary folder by a child process (not
committed; its size is reported). This process then opens it with ``backed="r"`` and measures,
with peak resident memory (RSS sampled every 0.1 s by psutil, and ``ru_maxrss``):

1. ``setup_anndata`` (the matrix validated a chunk at a time);
2. ``model.train``: streaming PCA (randomized subspace iteration over row chunks), the control
   pool, then ``--max-steps`` optimisation steps of the default model reading minibatches from disk
   through scvi-tools' ``AnnDataLoader`` (which supports backed matrices as they are); the time of a
   whole epoch is extrapolated from the measured steps and stated as such;
3. a pass of the same training data loader (scvi-tools' ``AnnDataLoader``, shuffled minibatches of
   random rows read from disk): over every training cell, or over ``--loader-batches`` batches and
   extrapolated (stated in the results);
4. ``predict_perturbation`` of ``--n-predict`` counterfactual cells from control sources, written to
   ``.h5ad``.

Run: ``python benchmarks/scale.py [--n-cells 1000000] [--max-steps 200]``
Writes ``benchmarks/results/scale.json`` and ``scale.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import torch

from _common import git_commit, machine, synthetic_screen_chunk

RESULTS = Path(__file__).resolve().parent / "results"
GIB = 2**30
QUIET = dict(enable_progress_bar=False, enable_model_summary=False, logger=False, enable_checkpointing=False)


def write_screen(path: Path, n_cells: int, n_genes: int, density: float, seed: int, chunk: int) -> None:
    """Write the synthetic screen chunk by chunk (X appended to the on-disk CSR, never whole in memory)."""
    import anndata as ad
    import h5py
    from anndata.io import sparse_dataset, write_elem

    obs_parts = []
    with h5py.File(path, "w") as f:
        for start in range(0, n_cells, chunk):
            x, obs = synthetic_screen_chunk(
                range(start, min(start + chunk, n_cells)), n_genes, density=density, seed=seed
            )
            if start == 0:
                write_elem(f, "X", x)
            else:
                sparse_dataset(f["X"]).append(x)
            obs_parts.append(obs)
        obs = pd.concat(obs_parts)
        for col in obs:
            obs[col] = obs[col].astype("category")
        write_elem(f, "obs", obs)
        write_elem(f, "var", pd.DataFrame(index=[f"gene{i}" for i in range(n_genes)]))
        for key in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
            write_elem(f, key, {})
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
    check = ad.read_h5ad(path, backed="r")
    assert check.shape == (n_cells, n_genes), check.shape
    check.file.close()


class PeakRSS:
    """Sample this process's resident memory in a thread; report the peak of each phase."""

    def __init__(self, interval: float = 0.1) -> None:
        self.proc, self.interval, self.peak, self._stop = psutil.Process(), interval, 0, False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def phase(self) -> float:
        """Peak RSS (GiB) since the last call; resets the peak to the current RSS."""
        peak = max(self.peak, self.proc.memory_info().rss) / GIB
        self.peak = self.proc.memory_info().rss
        return peak

    def stop(self) -> None:
        self._stop = True
        self.thread.join()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-cells", type=int, default=1_000_000)
    parser.add_argument("--n-genes", type=int, default=2000)
    parser.add_argument(
        "--density", type=float, default=0.1, help="fraction of stored entries per cell (before merging repeated genes)"
    )
    parser.add_argument("--chunk", type=int, default=20_000, help="cells per chunk when writing the file")
    parser.add_argument("--max-steps", type=int, default=200, help="training steps measured")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--n-predict", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-loader-epoch", action="store_true", help="skip the data-loader pass")
    parser.add_argument(
        "--loader-batches", type=int, default=0, help="stop the data-loader pass after this many batches (0: all)"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="folder for the temporary file")
    parser.add_argument("--write-only", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.write_only is not None:
        write_screen(args.write_only, args.n_cells, args.n_genes, args.density, args.seed, args.chunk)
        return {}
    commit = git_commit()
    torch.set_num_threads(max(1, args.threads))
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    wall0 = time.perf_counter()
    results: dict = {
        "benchmark": "scale",
        "command": "python benchmarks/scale.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "memory_total_gib": psutil.virtual_memory().total / GIB,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "seed": args.seed,
        "git_commit": commit,
        "n_cells": args.n_cells,
        "n_genes": args.n_genes,
        "phases": {},
    }
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        path = Path(tmp) / "screen.h5ad"
        t0 = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--write-only",
                str(path),
                "--n-cells",
                str(args.n_cells),
                "--n-genes",
                str(args.n_genes),
                "--density",
                str(args.density),
                "--seed",
                str(args.seed),
                "--chunk",
                str(args.chunk),
            ],
            check=True,
        )
        results["file"] = {"write_seconds": time.perf_counter() - t0, "size_gib": path.stat().st_size / GIB}
        print(results["file"], flush=True)
        results.update(run_phases(path, args, results["phases"]))
    results["wall_seconds"] = time.perf_counter() - wall0
    results["peak_rss_gib"] = max(p["peak_rss_gib"] for p in results["phases"].values())
    results["ru_maxrss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB
    results["target_met_under_4gib"] = max(results["peak_rss_gib"], results["ru_maxrss_gib"]) < 4.0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "scale.md").write_text(to_markdown(results))
    print(to_markdown(results))
    return results


def run_phases(path: Path, args, phases: dict) -> dict:
    import anndata as ad

    import calmflow_sc as cf
    from speed import StepTimer

    rss = PeakRSS()
    extra: dict = {"rss_at_start_gib": psutil.Process().memory_info().rss / GIB}

    def record(name: str, t0: float, **info) -> None:
        phases[name] = {"seconds": time.perf_counter() - t0, "peak_rss_gib": rss.phase(), **info}
        print(name, phases[name], flush=True)

    t0 = time.perf_counter()
    adata = ad.read_h5ad(path, backed="r")
    cf.CaLMFlowModel.setup_anndata(adata, perturbation_key="condition", context_keys=["cell_type"])
    record("open backed + setup_anndata (chunked validation)", t0, backed=bool(adata.isbacked))

    t0 = time.perf_counter()
    model = cf.CaLMFlowModel(adata, source="control")  # defaults otherwise
    timer = StepTimer(10)
    start_times: dict = {}

    from lightning.pytorch.callbacks import Callback

    class FitStart(Callback):
        def on_train_start(self, trainer, pl_module):
            start_times["train_start"] = time.perf_counter()

    model.train(
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        seed=args.seed,
        limit_val_batches=0,
        callbacks=[timer, FitStart()],
        **QUIET,
    )
    n_train = len(model.train_indices)
    per_step = (timer.t1 - timer.t0) / timer.steps
    steps_per_epoch = int(np.ceil(n_train / args.batch_size))
    record(
        "train (streaming PCA + control pool, then steps)",
        t0,
        before_first_step_seconds=start_times["train_start"] - t0,
        steps=args.max_steps,
        timed_steps=timer.steps,
        seconds_per_step=per_step,
        cells_per_second=timer.cells / (timer.t1 - timer.t0),
        training_cells=n_train,
        steps_per_epoch=steps_per_epoch,
        extrapolated_epoch_hours=steps_per_epoch * per_step / 3600,
        control_pool_gib=model.control_pool_["residuals"].nbytes / GIB,
    )

    if not args.skip_loader_epoch:
        from scvi.dataloaders import AnnDataLoader

        t0 = time.perf_counter()
        loader = AnnDataLoader(
            model.adata_manager, indices=model.train_indices, batch_size=args.batch_size, shuffle=True
        )
        n_seen, n_batches = 0, 0
        for batch in loader:
            n_seen += int(batch["X"].shape[0])
            n_batches += 1
            if args.loader_batches and n_batches >= args.loader_batches:
                break
        elapsed = time.perf_counter() - t0
        record(
            "training data loader: random minibatches read from disk (dense)",
            t0,
            cells=n_seen,
            batches=n_batches,
            batches_per_epoch=len(loader),
            seconds_per_batch=elapsed / n_batches,
            full_pass=n_batches == len(loader),
            extrapolated_epoch_hours=len(loader) * elapsed / n_batches / 3600,
        )

    t0 = time.perf_counter()
    pred = model.predict_perturbation("G0+G10", context={"cell_type": "t0"}, n_cells=args.n_predict, seed=args.seed)
    out = Path(path).with_name("prediction.h5ad")
    pred.write_h5ad(out)
    record(
        "predict_perturbation (control sources, residual kept) + write_h5ad",
        t0,
        cells=pred.n_obs,
        x_gib=pred.X.nbytes / GIB,
        file_gib=out.stat().st_size / GIB,
    )
    rss.stop()
    adata.file.close()
    return extra


def to_markdown(r: dict) -> str:
    f = r["file"]
    lines = [
        "# Scale: 1M cells from a backed .h5ad",
        "",
        f"Command: `{r['command']}` (code at commit {r['git_commit']})  ",
        f"Machine: {r['machine']}, {r['memory_total_gib']:.0f} GiB RAM; Python {r['python']}, torch {r['torch']}; "
        f"seed {r['seed']}; total wall time {r['wall_seconds']:.0f} s.  ",
        f"Data: synthetic sparse screen, {r['n_cells']:,} cells x {r['n_genes']:,} genes (CSR float32), written "
        f"chunk by chunk to a temporary folder by a child process in {f['write_seconds']:.0f} s; file size "
        f'{f["size_gib"]:.2f} GiB (deleted afterwards). The model: `CaLMFlowModel(adata, source="control")` '
        "defaults (gpt-neox-small, 50 PCs, K=1, P=4, N=16).",
        "",
        "| phase | seconds | peak RSS (GiB) | details |",
        "|---|---|---|---|",
    ]
    for name, p in r["phases"].items():
        details = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in p.items()
            if k not in ("seconds", "peak_rss_gib")
        )
        lines.append(f"| {name} | {p['seconds']:.0f} | {p['peak_rss_gib']:.2f} | {details} |")
    train = next(p for n, p in r["phases"].items() if n.startswith("train"))
    lines += [
        "",
        f"Peak RSS over all phases: **{r['peak_rss_gib']:.2f} GiB** (sampled), ru_maxrss {r['ru_maxrss_gib']:.2f} GiB; "
        f"under 4 GiB: **{r['target_met_under_4gib']}**.",
        "",
        f"One training epoch ({train['training_cells']:,} cells, {train['steps_per_epoch']:,} steps of "
        f"{train['seconds_per_step']:.3f} s measured over {train['timed_steps']} steps) is **extrapolated** to "
        f"{train['extrapolated_epoch_hours']:.1f} h on this machine (the backbone step, with reading each "
        "minibatch from disk inside it).",
    ]
    loader = next((p for n, p in r["phases"].items() if n.startswith("training data loader")), None)
    if loader:
        lines.append(
            f"The data loader alone read {loader['batches']:,} of the epoch's {loader['batches_per_epoch']:,} "
            f"minibatches at {loader['seconds_per_batch']:.3f} s each"
            + (
                " (the whole epoch, measured)."
                if loader["full_pass"]
                else f"; a whole epoch of reading is **extrapolated** to {loader['extrapolated_epoch_hours']:.2f} h."
            )
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
