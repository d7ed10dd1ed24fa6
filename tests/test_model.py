"""CaLMFlowModel on real and synthetic AnnData."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import calmflow_sc as cf

HELD = ["KLF1+MAP2K6", "KLF1+TGFBR2", "MAP2K3+MAP2K6", "MAP2K3+SLC38A2", "MAPK1+TGFBR2"]
SMALL = dict(n_components=8, backbone="gpt-neox-tiny", n_time_points=4, n_trajectories=2)
QUIET = dict(enable_progress_bar=False, enable_model_summary=False)


def synthetic(n_per: int = 20, n_genes: int = 30, seed: int = 0, counts: bool = False) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    conditions = ["control", "A", "B", "A+B", "C"]
    obs = pd.DataFrame(
        {
            "condition": np.repeat(conditions, n_per),
            "cell_type": np.tile(["x", "y"], len(conditions) * n_per // 2),
        }
    )
    x = rng.poisson(3.0, size=(len(obs), n_genes)).astype(np.float32)
    if not counts:
        x = np.log1p(x)
    obs.index = [f"cell{i}" for i in range(len(obs))]
    return ad.AnnData(X=sp.csr_matrix(x), obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)]))


@pytest.fixture(scope="module")
def norman(norman_path):
    import scanpy as sc

    return sc.read_h5ad(norman_path)


@pytest.mark.realdata
def test_norman_heldout_doubles_train_predict_save_load(norman, tmp_path):
    adata = norman.copy()
    cf.CaLMFlowModel.setup_anndata(adata, perturbation_key="condition", context_keys=["cell_type"])
    model = cf.CaLMFlowModel(adata, source="control", **SMALL)
    model.train(max_steps=3, batch_size=64, held_out={"condition": HELD}, seed=0, **QUIET)
    assert model.is_trained
    assert "train_loss" in model.history
    assert model.held_out_["n_cells"] == int(adata.obs["condition"].isin(HELD).sum())
    assert {c["condition"] for c in model.held_out_["conditions"]} == set(HELD)
    assert not set(HELD) & set(model.adata.obs["condition"].iloc[model.train_indices])
    pred = model.predict_perturbation(HELD, context={"cell_type": "k562"}, n_cells=10, seed=3)
    assert pred.shape == (50, adata.n_vars)
    assert list(pred.var_names) == list(adata.var_names)
    assert (pred.X >= 0).all()
    assert pred.obs["condition"].value_counts().to_dict() == dict.fromkeys(HELD, 10)
    assert pred.obs["generated"].all() and (pred.obs["cell_type"] == "k562").all()
    assert pred.obsm["X_calmflow"].shape == (50, 8)
    assert pred.uns["calmflow"]["seed"] == 3 and pred.uns["calmflow"]["source"] == "control"
    assert set(pred.obs["source_cell"]) <= set(adata.obs_names[adata.obs["condition"] == "control"])
    model.save(tmp_path / "m")
    loaded = cf.CaLMFlowModel.load(tmp_path / "m")
    again = loaded.predict_perturbation(HELD, context={"cell_type": "k562"}, n_cells=10, seed=3)
    np.testing.assert_array_equal(again.X, pred.X)
    assert loaded.held_out_ == model.held_out_
    other_seed = model.predict_perturbation(HELD, context={"cell_type": "k562"}, n_cells=10, seed=4)
    assert not np.array_equal(other_seed.X, pred.X)
    with pytest.raises(ValueError, match="never seen in training"):
        model.predict_perturbation("KLF1+NOTAGENE", context={"cell_type": "k562"})


def test_synthetic_noise_source_generate_and_trajectories(tmp_path):
    adata = synthetic()
    cf.CaLMFlowModel.setup_anndata(adata, perturbation_key="condition", context_keys=["cell_type"])
    model = cf.CaLMFlowModel(adata, **{**SMALL, "n_components": 5})
    model.train(max_epochs=2, batch_size=32, held_out={"condition": ["A+B"]}, seed=0, **QUIET)
    assert "validation_loss" in model.history
    pred = model.predict_perturbation(
        ["A+B", "B+A"], context=[{"cell_type": "x"}, {"cell_type": "y"}], n_cells=7, seed=0
    )
    assert pred.n_obs == 14 and list(pred.obs["cell_type"]) == ["x"] * 7 + ["y"] * 7
    traj = model.get_trajectories("A+B", {"cell_type": "x"}, n_cells=5, seed=0)
    assert traj.shape == (5, 4, 5)
    np.testing.assert_allclose(
        traj[:, -1],
        model.predict_perturbation("A+B", {"cell_type": "x"}, n_cells=5, seed=0).obsm["X_calmflow"],
        atol=1e-5,
    )
    gen = model.generate(model.prompts.build("A+B", {"cell_type": "x"}), n_cells=3, seed=1)
    assert gen.n_obs == 3 and "prompt" in gen.obs
    with pytest.raises(ValueError, match="outside the condition vocabulary"):
        model.generate("perturbation: ZZZ.", n_cells=2)
    # counterfactuals of given control cells, one-to-one
    controls = adata[adata.obs["condition"] == "control"][:6]
    cf_pred = model.predict_perturbation("A", {"cell_type": "x"}, source=controls, seed=0)
    assert list(cf_pred.obs["source_cell"]) == list(controls.obs_names)


def test_counts_are_detected_and_normalised():
    adata = synthetic(counts=True)
    cf.CaLMFlowModel.setup_anndata(adata, perturbation_key="condition")
    model = cf.CaLMFlowModel(adata, **{**SMALL, "n_components": 4})
    assert model.normalize_counts_
    model.train(max_steps=2, batch_size=32, seed=0, **QUIET)
    pred = model.predict_perturbation("A", n_cells=4, seed=0)
    assert pred.X.max() < 10  # log-normalised scale, not counts


def test_user_adata_untouched_except_registry():
    adata = synthetic()
    before_x = adata.X.copy()
    before_obs = adata.obs.copy()
    cf.CaLMFlowModel.setup_anndata(adata, perturbation_key="condition", context_keys=["cell_type"])
    model = cf.CaLMFlowModel(adata, **{**SMALL, "n_components": 4})
    model.train(max_steps=2, batch_size=32, seed=0, **QUIET)
    pred = model.predict_perturbation("A", {"cell_type": "x"}, n_cells=3, seed=0)
    assert (adata.X != before_x).nnz == 0
    pd.testing.assert_frame_equal(adata.obs[before_obs.columns], before_obs)
    assert not np.shares_memory(pred.X, adata.X.data)


# ------------------------------------------------------------------ error paths
def test_setup_errors_name_the_problem():
    adata = synthetic()
    with pytest.raises(KeyError, match="'nope' is not a column"):
        cf.CaLMFlowModel.setup_anndata(adata, perturbation_key="nope")
    with pytest.raises(KeyError, match="context_keys='tissue'"):
        cf.CaLMFlowModel.setup_anndata(adata, perturbation_key="condition", context_keys=["tissue"])
    with pytest.raises(ValueError, match="control_value='ctrl' does not occur"):
        cf.CaLMFlowModel.setup_anndata(adata, perturbation_key="condition", control_value="ctrl")
    bad = synthetic()
    bad.X = bad.X.toarray()
    bad.X[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        cf.CaLMFlowModel.setup_anndata(bad, perturbation_key="condition")
    bad.X[3, 2] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        cf.CaLMFlowModel.setup_anndata(bad, perturbation_key="condition")
    bad.X[3, 2] = -1.0
    with pytest.raises(ValueError, match="negative"):
        cf.CaLMFlowModel.setup_anndata(bad, perturbation_key="condition")
    dup = synthetic()
    dup.var_names = ["g0"] * dup.n_vars
    with pytest.raises(ValueError, match="duplicates"):
        cf.CaLMFlowModel.setup_anndata(dup, perturbation_key="condition")
    empty_part = synthetic()
    empty_part.obs["condition"] = empty_part.obs["condition"].replace({"A+B": "A+"})
    with pytest.raises(ValueError, match="empty part"):
        cf.CaLMFlowModel.setup_anndata(empty_part, perturbation_key="condition")


@pytest.fixture(scope="module")
def trained():
    adata = synthetic()
    cf.CaLMFlowModel.setup_anndata(adata, perturbation_key="condition", context_keys=["cell_type"])
    model = cf.CaLMFlowModel(adata, **{**SMALL, "n_components": 4})
    model.train(max_steps=2, batch_size=32, held_out={"condition": ["A+B"]}, seed=0, **QUIET)
    return model


def test_predict_errors(trained):
    with pytest.raises(ValueError, match=r"part 'D'.*known parts: 'A', 'B', 'C'"):
        trained.predict_perturbation("A+D", {"cell_type": "x"})
    with pytest.raises(ValueError, match="cell_type='z' was never seen"):
        trained.predict_perturbation("A", {"cell_type": "z"})
    with pytest.raises(KeyError, match="needs a value for 'cell_type'"):
        trained.predict_perturbation("A")
    with pytest.raises(KeyError, match="were not registered"):
        trained.predict_perturbation("A", {"cell_type": "x", "dose": "1"})
    with pytest.raises(ValueError, match="n_cells must be a positive integer"):
        trained.predict_perturbation("A", {"cell_type": "x"}, n_cells=0)


def test_untrained_model_refuses_to_predict():
    adata = synthetic()
    cf.CaLMFlowModel.setup_anndata(adata, perturbation_key="condition")
    model = cf.CaLMFlowModel(adata, **{**SMALL, "n_components": 4})
    with pytest.raises(RuntimeError, match="not trained"):
        model.predict_perturbation("A")


def test_load_errors(trained, tmp_path):
    trained.save(tmp_path / "m")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        trained.save(tmp_path / "m")
    other = synthetic(n_genes=31)
    with pytest.raises(ValueError, match="genes differ"):
        cf.CaLMFlowModel.load(tmp_path / "m", adata=other)
    (tmp_path / "m" / "model.pt").write_bytes(b"truncated")
    with pytest.raises(OSError, match="truncated or corrupted"):
        cf.CaLMFlowModel.load(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="missing"):
        (tmp_path / "empty").mkdir()
        cf.CaLMFlowModel.load(tmp_path / "empty")


def test_save_overwrite_is_atomic_and_load_attaches_adata(trained, tmp_path):
    trained.save(tmp_path / "m")
    trained.save(tmp_path / "m", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary or backup folder left
    adata = synthetic()
    loaded = cf.CaLMFlowModel.load(tmp_path / "m", adata=adata)
    assert loaded.adata is adata
    loaded.train(max_steps=1, batch_size=32, seed=0, **QUIET)


def test_control_source_keeps_the_source_cells_residual(trained):
    controls = trained.adata[trained.adata.obs["condition"] == "control"][:5]
    kept = trained.predict_perturbation("A", {"cell_type": "x"}, source=controls, seed=0)
    plain = trained.predict_perturbation("A", {"cell_type": "x"}, source=controls, seed=0, keep_source_residual=False)
    np.testing.assert_allclose(kept.obsm["X_calmflow"], plain.obsm["X_calmflow"])
    residual = trained._representation.residual(controls.X)
    both_positive = (kept.X > 0) & (plain.X > 0)
    np.testing.assert_allclose((kept.X - plain.X)[both_positive], residual[both_positive], atol=1e-4)
    assert kept.uns["calmflow"]["keep_source_residual"] and not plain.uns["calmflow"]["keep_source_residual"]
    noise = trained.predict_perturbation("A", {"cell_type": "x"}, n_cells=3, source="noise", seed=0)
    assert not noise.uns["calmflow"]["keep_source_residual"]


def test_existing_pca_from_obsm(tmp_path):
    import scanpy as sc

    adata = synthetic()
    sc.pp.pca(adata, n_comps=6)
    cf.CaLMFlowModel.setup_anndata(adata, perturbation_key="condition")
    model = cf.CaLMFlowModel(adata, representation_key="X_pca", **{**SMALL, "n_components": 99})
    assert model.module.n_features == 6
    model.train(max_steps=1, batch_size=32, seed=0, **QUIET)
    np.testing.assert_allclose(model._representation.components, adata.varm["PCs"].T, atol=1e-6)
    model.save(tmp_path / "m")
    plain = synthetic()  # no X_pca needed once the representation is saved
    loaded = cf.CaLMFlowModel.load(tmp_path / "m", adata=plain)
    assert loaded.module.n_features == 6
    with pytest.raises(KeyError, match="X_umap"):
        cf.CaLMFlowModel(adata, representation_key="X_umap", **SMALL)
    del adata.varm["PCs"]
    with pytest.raises(KeyError, match="varm\\['PCs'\\]"):
        cf.CaLMFlowModel(adata, representation_key="X_pca", **SMALL)


def test_pretrained_local_backbone_with_its_tokenizer_and_lora(tmp_path):
    """A tiny causal LM saved locally stands in for a downloaded one (Pythia-style)."""
    import torch
    from transformers import AutoModelForCausalLM, GPTNeoXConfig

    from calmflow_sc.data import train_condition_tokenizer

    tokenizer = train_condition_tokenizer(["perturbation", "cell type", "control", "A", "B", "C", "x", "y", "hello"])
    tokenizer.pad_token = None  # like many pretrained LMs; the model must add one
    tokenizer.eos_token = "[UNK]"
    config = GPTNeoXConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")

    adata = synthetic()
    cf.CaLMFlowModel.setup_anndata(adata, perturbation_key="condition", context_keys=["cell_type"])
    model = cf.CaLMFlowModel(
        adata, n_components=4, backbone=str(tmp_path / "lm"), finetune="lora", n_time_points=4, n_trajectories=2
    )
    assert model.pretrained_backbone_ and model.tokenizer.padding_side == "left"
    assert any("lora_" in n for n in model.module.trainable_parameter_names())
    model.train(max_steps=2, batch_size=32, seed=0, **QUIET)
    pred = model.predict_perturbation("A+B", {"cell_type": "x"}, n_cells=4, seed=0)
    free_text = model.generate("hello", n_cells=2, seed=0)  # its tokenizer takes any text
    assert free_text.n_obs == 2
    model.save(tmp_path / "m")
    (tmp_path / "lm" / "model.safetensors").unlink()  # the original checkpoint is not needed to load
    loaded = cf.CaLMFlowModel.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.predict_perturbation("A+B", {"cell_type": "x"}, n_cells=4, seed=0).X, pred.X)
