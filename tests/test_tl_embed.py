from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import calmflow_sc as cf

N_GENES = 25


def _cells(n: int, conditions: list[str], seed: int, prefix: str) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    labels = np.array([conditions[i % len(conditions)] for i in range(n)])
    x = rng.gamma(1.0, 1.0, size=(n, N_GENES))
    for k, c in enumerate(sorted(set(conditions))):
        x[labels == c, k] += 3.0  # one marker gene per condition
    obs = pd.DataFrame({"condition": labels, "cell_type": "k562"}, index=[f"{prefix}{i}" for i in range(n)])
    return ad.AnnData(X=x.astype(np.float32), obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(N_GENES)]))


@pytest.fixture
def real() -> ad.AnnData:
    return _cells(90, ["A", "B", "control"], 0, "r")


@pytest.fixture
def pred() -> ad.AnnData:
    p = _cells(40, ["A", "B"], 1, "p")
    p.obs["generated"] = True
    return p


def _snapshot(a: ad.AnnData):
    return a.X.copy(), a.obs.copy(), dict(a.obsm), dict(a.uns), list(a.var_names)


def test_pca_shapes_keys_and_inputs_untouched(pred, real):
    before_pred, before_real = _snapshot(pred), _snapshot(real)
    joint = cf.tl.embed_joint(
        pred, real, perturbation_key="condition", control_value="control", n_comps=10, method="pca"
    )
    assert joint.shape == (real.n_obs + pred.n_obs, N_GENES)
    assert joint.obsm["X_joint_pca"].shape == (joint.n_obs, 10)
    assert "X_joint_umap" not in joint.obsm
    assert joint.obs["generated"].dtype == bool
    assert joint.obs["generated"].sum() == pred.n_obs
    assert list(joint.obs["source"].cat.categories) == ["real", "generated"]
    assert (joint.obs["source"] == "generated").sum() == pred.n_obs
    assert set(joint.obs["condition"].astype(str)) == {"A", "B", "control"}
    assert joint.obs["cell_type"].eq("k562").all()
    params = joint.uns["embed_joint"]
    assert params["perturbation_key"] == "condition"
    assert params["fit_on"] == "real" and params["n_comps"] == 10 and params["method"] == "pca"
    assert params["n_real"] == real.n_obs and params["n_generated"] == pred.n_obs
    for a, (x, obs, obsm, uns, var) in ((pred, before_pred), (real, before_real)):
        np.testing.assert_array_equal(a.X, x)
        pd.testing.assert_frame_equal(a.obs, obs)
        assert dict(a.obsm) == obsm and dict(a.uns).keys() == uns.keys() and list(a.var_names) == var


def test_control_left_out_without_control_value_and_conditions_subset(pred, real):
    joint = cf.tl.embed_joint(pred, real, perturbation_key="condition", conditions=["A"], method="pca", n_comps=5)
    assert set(joint.obs["condition"].astype(str)) == {"A"}
    assert joint.n_obs == (real.obs["condition"] == "A").sum() + (pred.obs["condition"] == "A").sum()


def test_fit_on_real_projects_generated_onto_real_axes(pred, real):
    joint = cf.tl.embed_joint(pred, real, perturbation_key="condition", method="pca", n_comps=5)
    real_part = joint[~joint.obs["generated"].to_numpy()]
    gen_part = joint[joint.obs["generated"].to_numpy()]
    loadings = joint.varm["joint_PCs"]
    mean = real_part.X.mean(axis=0)
    np.testing.assert_allclose(gen_part.obsm["X_joint_pca"], (gen_part.X - mean) @ loadings, atol=1e-6)
    # real coordinates are centred: the PCA was fitted on them alone
    np.testing.assert_allclose(real_part.obsm["X_joint_pca"].mean(axis=0), 0, atol=1e-6)
    combined = cf.tl.embed_joint(pred, real, perturbation_key="condition", method="pca", n_comps=5, fit_on="combined")
    np.testing.assert_allclose(combined.obsm["X_joint_pca"].mean(axis=0), 0, atol=1e-6)
    assert np.abs(gen_part.obsm["X_joint_pca"].mean(axis=0)).max() > 1e-3


@pytest.mark.slow  # the first UMAP of a session compiles numba code (~20 s on 2 cores)
def test_identical_cells_overlap_in_pca_and_umap(real):
    twin = real[real.obs["condition"].isin(["A", "B"])].copy()
    twin.obs_names = [f"gen-{i}" for i in twin.obs_names]
    joint = cf.tl.embed_joint(twin, real, perturbation_key="condition", method="umap", n_comps=10, n_neighbors=10)
    gen = joint.obs["generated"].to_numpy()
    pca = joint.obsm["X_joint_pca"]
    np.testing.assert_allclose(pca[gen], pca[: gen.sum()], atol=1e-8)  # real A/B cells come first, in order
    umap = joint.obsm["X_joint_umap"]
    assert umap.shape == (joint.n_obs, 2)
    twin_gap = np.linalg.norm(umap[gen] - umap[: gen.sum()], axis=1)
    spread = np.linalg.norm(umap - umap.mean(axis=0), axis=1).mean()
    assert np.median(twin_gap) < 0.1 * spread, (np.median(twin_gap), spread)
    assert joint.uns["embed_joint"]["n_neighbors"] == 10


def test_sparse_input_matches_dense(pred, real):
    dense = cf.tl.embed_joint(pred, real, perturbation_key="condition", method="pca", n_comps=5)
    real_sparse = real.copy()
    real_sparse.X = sp.csr_matrix(real_sparse.X)
    sparse = cf.tl.embed_joint(pred, real_sparse, perturbation_key="condition", method="pca", n_comps=5)
    assert sp.issparse(sparse.X)
    np.testing.assert_allclose(np.abs(sparse.obsm["X_joint_pca"]), np.abs(dense.obsm["X_joint_pca"]), atol=1e-5)


def test_n_comps_capped_for_small_data(pred, real):
    joint = cf.tl.embed_joint(pred, real, perturbation_key="condition", method="pca", n_comps=50)
    assert joint.obsm["X_joint_pca"].shape[1] == N_GENES - 1
    assert joint.uns["embed_joint"]["n_comps"] == N_GENES - 1


def test_gene_mismatch_errors_name_shapes_and_genes(pred, real):
    with pytest.raises(ValueError, match=r"shape \(40, 24\).*shape \(90, 25\)"):
        cf.tl.embed_joint(pred[:, :24], real, perturbation_key="condition")
    swapped = pred[:, [1, 0, *range(2, N_GENES)]]
    with pytest.raises(ValueError, match=r"differ at 2 positions.*'g1', 'g0'"):
        cf.tl.embed_joint(swapped, real, perturbation_key="condition")


def test_bad_input_errors(pred, real):
    with pytest.raises(KeyError, match=r"pred\.obs has no column 'perturbation'"):
        cf.tl.embed_joint(pred, real, perturbation_key="perturbation")
    with pytest.raises(KeyError, match=r"\['Z'\] occur in neither"):
        cf.tl.embed_joint(pred, real, perturbation_key="condition", conditions=["A", "Z"])
    with pytest.raises(ValueError, match="control_value 'ctrl'"):
        cf.tl.embed_joint(pred, real, perturbation_key="condition", control_value="ctrl")
    with pytest.raises(ValueError, match="method must be"):
        cf.tl.embed_joint(pred, real, perturbation_key="condition", method="tsne")
    with pytest.raises(ValueError, match="fit_on must be"):
        cf.tl.embed_joint(pred, real, perturbation_key="condition", fit_on="pred")
    with pytest.raises(ValueError, match="pred has no cells"):
        cf.tl.embed_joint(pred, real, perturbation_key="condition", conditions=["control"])
