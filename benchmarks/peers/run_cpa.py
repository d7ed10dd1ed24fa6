"""Train CPA (cpa-tools 0.8.1) on the exported Norman split and predict the held-out doubles.

Runs in ``benchmarks/peers/.venv-cpa`` (``make peers-env``), never in the project's environment.
Settings: CPA's Norman 2019 tutorial (``docs/tutorials/Norman.ipynb``: n_latent 128, encoder 2 x 512
with batch norm, decoder 2 x 256, dropout 0.2 in the decoder, not variational; lr / adversary lr 3e-4,
weight decays 4e-7, reg_adv 50, pen_adv 1, 2 adversary steps, mixup alpha 0.2, step_size_lr 45,
early stopping patience 5 with validation every 5 epochs, up to 2,000 epochs) with these changes for
this data and budget, all stated in the output:
  * ``recon_loss="gauss"`` and ``is_count_data=False``: the shared data is log-normalised (the
    tutorial's NB loss needs counts);
  * batch size 256 (the tutorial's 2,048 is for a GPU and 111k cells; here 5k cells);
  * the warm-up epochs (AE pre-training 30, mixup 10, adversary 100) divided by ``--warmup-divisor``
    (default 5) so they end inside the wall-clock budget;
  * training stops at ``--budget`` seconds of wall-clock (Lightning ``max_time``); the best state on the
    validation metric (CPA's ``SaveBestState``) is kept;
  * no early stopping by default, so that CPA trains for the same wall-clock budget as the other models
    (with the tutorial's patience it stopped after 45 epochs, 32 s of a 300 s budget); ``--patience 5``
    restores the tutorial's early stopping;
  * a constant dummy ``smiles`` column (``smiles_key=None`` crashes in 0.8.1); RDKit embeddings unused.
Counterfactuals as the CPA docs describe: K562 control cells (resampled, as many as measured per
held-out double) relabelled with the double are added to the AnnData in the ``ood`` split (never
trained on) and ``model.predict`` decodes them with the double's embedding.

Run: ``.venv-cpa/bin/python benchmarks/peers/run_cpa.py --work benchmarks/peers/work --budget 300``.
Writes ``pred_cpa.h5ad`` and ``cpa_run.json`` to ``--work``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: CPA always adds an EarlyStopping callback; a patience no run reaches turns it off.
NO_EARLY_STOPPING = 10**9
MODEL = {
    "n_latent": 128,
    "recon_loss": "gauss",
    "doser_type": "linear",
    "n_hidden_encoder": 512,
    "n_layers_encoder": 2,
    "n_hidden_decoder": 256,
    "n_layers_decoder": 2,
    "use_batch_norm_encoder": True,
    "use_layer_norm_encoder": False,
    "use_batch_norm_decoder": False,
    "use_layer_norm_decoder": False,
    "dropout_rate_encoder": 0.0,
    "dropout_rate_decoder": 0.2,
    "variational": False,
}
TRAINER = {
    "n_epochs_kl_warmup": None,
    "n_epochs_pretrain_ae": 30,
    "n_epochs_adv_warmup": 100,
    "n_epochs_mixup_warmup": 10,
    "mixup_alpha": 0.2,
    "adv_steps": 2,
    "n_hidden_adv": 128,
    "n_layers_adv": 2,
    "use_batch_norm_adv": True,
    "use_layer_norm_adv": False,
    "dropout_rate_adv": 0.2,
    "reg_adv": 50.0,
    "pen_adv": 1.0,
    "lr": 0.0003,
    "wd": 4e-07,
    "adv_lr": 0.0003,
    "adv_wd": 4e-07,
    "adv_loss": "cce",
    "doser_lr": 0.0003,
    "doser_wd": 4e-07,
    "do_clip_grad": False,
    "gradient_clip_value": 5.0,
    "step_size_lr": 45,
}


def main(argv: list[str] | None = None) -> dict:
    """Train CPA and write its predictions; return the run record.

    Parameters
    ----------
    argv
        Command-line arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    The run record written to ``cpa_run.json`` (status ``ok`` or ``failed`` with the error).
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=HERE / "work")
    parser.add_argument("--budget", type=float, default=300.0, help="training wall-clock seconds")
    parser.add_argument("--max-epochs", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--warmup-divisor", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--patience", type=int, default=None, help="early-stopping patience in validation checks (default: none)"
    )
    args = parser.parse_args(argv)
    record: dict = {"peer": "cpa", "budget_seconds": args.budget, "python": platform.python_version()}
    try:
        record.update(run(args))
        record["status"] = "ok"
    except Exception as err:  # recorded for evaluate_peers.py, then re-raised
        record.update(status="failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
        raise
    finally:
        args.work.mkdir(parents=True, exist_ok=True)
        (args.work / "cpa_run.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    return record


def run(args: argparse.Namespace) -> dict:
    """The CPA run proper (see the module docstring)."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    import torch

    torch.set_num_threads(max(1, args.threads))
    import cpa

    split = json.loads((args.work / "split.json").read_text())
    key, context = split["perturbation_key"], split["context"]
    train = ad.read_h5ad(args.work / "train.h5ad")
    rng = np.random.default_rng(args.seed)
    ctx_mask = np.ones(train.n_obs, dtype=bool)
    for column, value in context.items():
        ctx_mask &= (train.obs[column].astype(str) == value).to_numpy()
    controls = np.flatnonzero(ctx_mask & (train.obs[key].astype(str) == "control").to_numpy())
    if not len(controls):
        raise ValueError(f"no control cells in {context} in train.h5ad.")
    pieces = [train]
    for condition in split["predict"]:
        n = split["n_cells"][condition]
        cf = train[rng.choice(controls, size=n, replace=n > len(controls))].copy()
        cf.obs[key] = condition
        cf.obs_names = [f"cpa-{condition}-{i}" for i in range(n)]
        pieces.append(cf)
    adata = ad.concat(pieces, merge="same")
    adata.obs[key] = adata.obs[key].astype(str)
    is_cf = np.zeros(adata.n_obs, dtype=bool)
    is_cf[train.n_obs :] = True
    # train / valid as a random 90/10 split of the training cells; the counterfactuals are 'ood'
    adata.obs["split"] = np.where(is_cf, "ood", np.where(rng.random(adata.n_obs) < 0.9, "train", "valid"))
    adata.obs["smiles"] = ["..".join("C" for _ in c.split("+")) for c in adata.obs[key]]  # unused, see docstring
    for column in ("cell_type",):
        adata.obs[column] = adata.obs[column].astype(str).astype("category")

    cpa.CPA.setup_anndata(
        adata,
        perturbation_key=key,
        control_group="control",
        categorical_covariate_keys=["cell_type"],
        smiles_key="smiles",
        is_count_data=False,
        max_comb_len=2,
    )
    trainer = dict(TRAINER)
    for name in ("n_epochs_pretrain_ae", "n_epochs_adv_warmup", "n_epochs_mixup_warmup"):
        trainer[name] = max(1, round(TRAINER[name] / args.warmup_divisor))
    model = cpa.CPA(
        adata, split_key="split", train_split="train", valid_split="valid", test_split="ood", seed=args.seed, **MODEL
    )
    t0 = time.perf_counter()
    model.train(
        max_epochs=args.max_epochs,
        use_gpu=False,
        batch_size=args.batch_size,
        plan_kwargs=trainer,
        early_stopping_patience=NO_EARLY_STOPPING if args.patience is None else args.patience,
        check_val_every_n_epoch=5,
        save_path=False,
        max_time=datetime.timedelta(seconds=args.budget),
        enable_progress_bar=False,
    )
    train_seconds = time.perf_counter() - t0
    trainer_state = getattr(getattr(model, "runner", None), "trainer", None)
    epochs = int(trainer_state.current_epoch) if trainer_state is not None else None

    cf_idx = np.flatnonzero(is_cf)
    counterfactual = adata[cf_idx].copy()
    model.predict(counterfactual, batch_size=256)
    x = np.asarray(counterfactual.obsm["CPA_pred"], dtype=np.float32)
    pred = ad.AnnData(
        X=np.clip(x, 0, None),
        obs=pd.DataFrame({key: adata.obs[key].to_numpy()[cf_idx], **context}, index=adata.obs_names[cf_idx]),
        var=pd.DataFrame(index=train.var_names.copy()),
    )
    pred.write_h5ad(args.work / "pred_cpa.h5ad")
    return {
        "version": cpa.__version__,
        "backend": f"torch {torch.__version__} CPU, {torch.get_num_threads()} thread(s)",
        "settings": {
            "model": MODEL,
            "plan": trainer,
            "batch_size": args.batch_size,
            "max_epochs": args.max_epochs,
            "early_stopping": "none (the budget ends training)"
            if args.patience is None
            else f"patience {args.patience}, validation every 5 epochs",
            "seed": args.seed,
        },
        "train_seconds": train_seconds,
        "epochs": epochs,
        "n_predicted": int(pred.n_obs),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }


if __name__ == "__main__":
    main()
