"""AnnData opened backed (``backed="r"``): setup, streaming PCA, training and prediction from disk."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import calmflow_sc as cf
from calmflow_sc.data.representation import PCARepresentation, iter_row_chunks

SMALL = dict(n_components=6, backbone="gpt-neox-tiny", n_time_points=3, n_trajectories=2)
QUIET = dict(enable_progress_bar=False, enable_model_summary=False)


def _screen(n_per: int = 30, n_genes: int = 40, seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    conditions = ["control", "A", "B", "A+B"]
    obs = pd.DataFrame(
        {"condition": np.repeat(conditions, n_per), "cell_type": np.tile(["x", "y"], 2 * n_per)},
        index=[f"cell{i}" for i in range(4 * n_per)],
    )
    rate = np.full((len(obs), n_genes), 1.0)
    rate[obs["condition"].str.contains("A").to_numpy(), :5] = 4.0
    x = np.log1p(rng.poisson(rate).astype(np.float32))
    return ad.AnnData(X=sp.csr_matrix(x), obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)]))


@pytest.fixture
def backed(tmp_path):
    _screen().write_h5ad(tmp_path / "screen.h5ad")
    adata = ad.read_h5ad(tmp_path / "screen.h5ad", backed="r")
    yield adata
    adata.file.close()


def test_backed_setup_train_predict(backed):
    assert backed.isbacked
    cf.CaLMFlowModel.setup_anndata(backed, perturbation_key="condition", context_keys=["cell_type"])
    model = cf.CaLMFlowModel(backed, source="control", **SMALL)
    model.train(max_epochs=2, batch_size=32, held_out={"condition": ["A+B"]}, seed=0, **QUIET)
    assert backed.isbacked and model.is_trained_
    # the streaming PCA (used for backed data) spans what an exact PCA of the training cells does
    memory = backed.to_memory()
    fit = memory[~memory.obs["condition"].isin(["A+B"])].X
    exact = PCARepresentation.fit(fit, 6)
    rep = model._representation
    captured = (rep.transform(fit) * rep.scale).var(axis=0).sum()
    assert captured >= 0.99 * (exact.transform(fit) * exact.scale).var(axis=0).sum()
    pred = model.predict_perturbation("A+B", {"cell_type": "x"}, n_cells=8, seed=0)
    assert pred.shape == (8, backed.n_vars) and np.isfinite(pred.X).all()
    # counterfactuals of control cells read from the backed file equal those of the same cells in memory
    controls = backed[np.flatnonzero(memory.obs["condition"].to_numpy() == "control")[:5]]
    from_disk = model.predict_perturbation("A", {"cell_type": "x"}, source=controls, seed=1)
    in_memory = model.predict_perturbation("A", {"cell_type": "x"}, source=controls.to_memory(), seed=1)
    np.testing.assert_allclose(from_disk.X, in_memory.X, atol=1e-5)
    assert list(from_disk.obs["source_cell"]) == list(controls.obs_names)


def test_backed_validation_reads_in_chunks(tmp_path, monkeypatch):
    adata = _screen()
    x = adata.X.toarray()
    x[-1, 3] = -1.0  # a bad value in the last rows: found by the chunked check
    adata.X = sp.csr_matrix(x)
    adata.write_h5ad(tmp_path / "bad.h5ad")
    backed = ad.read_h5ad(tmp_path / "bad.h5ad", backed="r")
    monkeypatch.setattr("calmflow_sc.model._validation.BACKED_CHUNK", 16)
    with pytest.raises(ValueError, match=r"adata\.X contains negative values"):
        cf.CaLMFlowModel.setup_anndata(backed, perturbation_key="condition")
    backed.file.close()


def test_streaming_pca_matches_exact_pca():
    x = _screen(n_per=60).X
    rows = np.arange(x.shape[0])
    exact = PCARepresentation.fit(x, 5)
    streamed = PCARepresentation.fit_streaming(lambda: iter_row_chunks(x, rows, chunk_size=50), 5, seed=0)
    np.testing.assert_allclose(streamed.mean, exact.mean, atol=1e-5)
    # same leading subspace: the singular values of the overlap of the two bases are all close to 1
    overlap = np.linalg.svd(exact.components[:2] @ streamed.components.T, compute_uv=False)
    assert overlap.min() > 0.99
    assert streamed.scale == pytest.approx(exact.scale, rel=0.02)
    with pytest.raises(ValueError, match="n_components=99"):
        PCARepresentation.fit_streaming(lambda: iter_row_chunks(x, rows), 99)
