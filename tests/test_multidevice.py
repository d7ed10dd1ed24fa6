"""Several devices through Lightning's own strategies (no distributed code of ours)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

import calmflow_sc as cf


def _adata(n_per: int = 16, n_genes: int = 20, seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    conditions = ["control", "A", "B", "A+B"]
    obs = pd.DataFrame({"condition": np.repeat(conditions, n_per)}, index=[f"c{i}" for i in range(4 * n_per)])
    x = np.log1p(rng.poisson(2.0, size=(len(obs), n_genes)).astype(np.float32))
    return ad.AnnData(X=sp.csr_matrix(x), obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)]))


def test_two_cpu_processes_with_ddp_spawn():
    adata = _adata()
    cf.CaLMFlowModel.setup_anndata(adata, perturbation_key="condition")
    model = cf.CaLMFlowModel(adata, n_components=4, backbone="gpt-neox-tiny", n_time_points=3, n_trajectories=2)
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    model.train(
        max_epochs=2,
        batch_size=16,
        seed=0,
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    # the weights trained in the spawned workers come back to this process
    after = model.module.state_dict()
    assert any(not np.allclose(before[k].numpy(), after[k].numpy()) for k in before)
    assert model.is_trained_ and model.epochs_trained_ == 2
    assert any(key.startswith("train_loss") and len(v) == 2 for key, v in model.history.items())
    pred = model.predict_perturbation("A+B", n_cells=6, seed=0)
    assert pred.n_obs == 6 and np.isfinite(pred.X).all()
