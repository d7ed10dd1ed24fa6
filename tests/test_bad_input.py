"""Bad or unusual input: each accepted or refused with an error naming the problem."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import calmflow_sc as cf
from tests.test_model import QUIET, SMALL, synthetic

TINY = {**SMALL, "n_components": 4}


def train_small(adata, **kwargs):
    model = cf.CaLMFlowModel(adata, **{**TINY, **kwargs})
    model.train(max_steps=2, batch_size=16, seed=0, **QUIET)
    return model


@pytest.mark.parametrize("kind", ["sparse", "dense"])
@pytest.mark.parametrize("column", ["string", "categorical"])
def test_sparse_dense_string_categorical_are_accepted(kind, column):
    adata = synthetic()
    if kind == "dense":
        adata.X = adata.X.toarray()
    if column == "categorical":
        adata.obs["condition"] = adata.obs["condition"].astype("category")
    cf.CaLMFlowModel.setup_anndata(adata, perturbation_key="condition")
    pred = train_small(adata).predict_perturbation("A+B", n_cells=3, seed=0)
    assert pred.shape == (3, adata.n_vars)


def test_views_are_refused_clearly():
    adata = synthetic()
    with pytest.raises(ValueError, match=r"view.*\.copy\(\)"):
        cf.CaLMFlowModel.setup_anndata(adata[adata.obs["cell_type"] == "x"], perturbation_key="condition")
    # backed AnnData is accepted: see tests/test_backed.py


def test_all_zero_cells_and_genes_are_accepted():
    adata = synthetic()
    x = adata.X.toarray()
    x[:, 0] = 0.0  # a gene never expressed
    x[5] = 0.0  # an empty cell
    adata.X = sp.csr_matrix(x)
    cf.CaLMFlowModel.setup_anndata(adata, perturbation_key="condition")
    pred = train_small(adata).predict_perturbation("A", n_cells=3, seed=0)
    assert np.isfinite(pred.X).all()


def test_blank_condition_names_are_refused():
    adata = synthetic()
    conditions = adata.obs["condition"].astype(str).to_numpy()
    conditions[3] = "   "
    adata.obs["condition"] = conditions
    with pytest.raises(ValueError, match="empty or whitespace"):
        cf.CaLMFlowModel.setup_anndata(adata, perturbation_key="condition")
    adata.obs["condition"] = adata.obs["condition"].replace({"   ": None})
    with pytest.raises(ValueError, match="missing value"):
        cf.CaLMFlowModel.setup_anndata(adata, perturbation_key="condition")


def test_names_with_prompt_punctuation_are_single_tokens():
    adata = synthetic()
    adata.obs["condition"] = adata.obs["condition"].replace({"A": "RP11-1.2", "A+B": "B+RP11-1.2"})
    adata.obs["cell_type"] = adata.obs["cell_type"].replace({"x": "T cell: CD4+"})
    cf.CaLMFlowModel.setup_anndata(adata, perturbation_key="condition", context_keys=["cell_type"])
    model = cf.CaLMFlowModel(adata, **TINY)
    text = model.prompts.build("B+RP11-1.2", {"cell_type": "T cell: CD4+"})
    tokens = model.tokenizer.convert_ids_to_tokens(model.tokenizer(text)["input_ids"])
    assert "RP11-1.2" in tokens and "T cell: CD4+" in tokens and "[UNK]" not in tokens


def test_controls_missing_in_a_context():
    adata = synthetic()
    drop = (adata.obs["condition"] == "control") & (adata.obs["cell_type"] == "y")
    adata = adata[~drop.to_numpy()].copy()
    cf.CaLMFlowModel.setup_anndata(adata, perturbation_key="condition", context_keys=["cell_type"])
    with pytest.raises(ValueError, match=r"control cells.*\{'cell_type': 'y'\}"):
        cf.CaLMFlowModel(adata, source="control", **TINY)
    train_small(adata)  # the noise source does not need controls in every context


def test_other_context_key_checks():
    adata = synthetic()
    with pytest.raises(ValueError, match="cannot also be a context key"):
        cf.CaLMFlowModel.setup_anndata(adata, perturbation_key="condition", context_keys=["condition"])
    with pytest.raises(ValueError, match="control label"):
        bad = synthetic()
        bad.obs["condition"] = bad.obs["condition"].replace({"A+B": "A+control"})
        cf.CaLMFlowModel.setup_anndata(bad, perturbation_key="condition")


def test_source_cells_with_other_genes_are_refused():
    adata = synthetic()
    cf.CaLMFlowModel.setup_anndata(adata, perturbation_key="condition")
    model = train_small(adata)
    wrong = synthetic(n_genes=20)
    with pytest.raises(ValueError, match="lacks 10 of the model's genes"):
        model.predict_perturbation("A", source=wrong)


def test_model_folder_of_another_class_is_refused(tmp_path):
    import json

    adata = synthetic()
    cf.CaLMFlowModel.setup_anndata(adata, perturbation_key="condition")
    train_small(adata).save(tmp_path / "m")
    manifest = json.loads((tmp_path / "m" / "calmflow.json").read_text())
    manifest["class"] = "SCVI"
    (tmp_path / "m" / "calmflow.json").write_text(json.dumps(manifest))
    with pytest.raises(TypeError, match="holds a 'SCVI' model"):
        cf.CaLMFlowModel.load(tmp_path / "m")


def test_same_seed_same_training_and_predictions_bitwise():
    import scvi

    runs = []
    for _ in range(2):
        scvi.settings.seed = 5  # initial weights; train(seed=) seeds training itself
        adata = synthetic()
        cf.CaLMFlowModel.setup_anndata(adata, perturbation_key="condition")
        model = cf.CaLMFlowModel(adata, **TINY)
        model.train(max_steps=4, batch_size=16, seed=11, **QUIET)
        runs.append((model, model.predict_perturbation("A+B", n_cells=5, seed=2)))
    (m1, p1), (m2, p2) = runs
    for (n, a), (_, b) in zip(m1.module.named_parameters(), m2.module.named_parameters(), strict=True):
        assert torch.equal(a, b), n
    np.testing.assert_array_equal(p1.X, p2.X)
