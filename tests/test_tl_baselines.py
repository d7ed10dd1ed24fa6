"""Metrics against hand-computed values and identities; baselines on a known synthetic screen."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import calmflow_sc as cf
from calmflow_sc.baselines import additive_baseline, control_baseline


def test_energy_distance_hand_computed():
    x, y = np.array([[0.0], [2.0]]), np.array([[1.0]])
    # E|X-Y| = 1, E|X-X'| = (0 + 2 + 2 + 0) / 4 = 1, E|Y-Y'| = 0 -> 2*1 - 1 - 0 = 1
    assert cf.tl.energy_distance(x, y) == pytest.approx(1.0)
    # squared: 2*1 - 2 - 0 = 0 = 2 * ||mean(x) - mean(y)||^2
    assert cf.tl.energy_distance(x, y, squared=True) == pytest.approx(0.0)


def test_mmd_hand_computed_single_width():
    x, y = np.array([[0.0]]), np.array([[1.0]])
    expected = 2 - 2 * np.exp(-1 / 2)
    assert cf.tl.mmd(x, y, widths=[1.0]) == pytest.approx(expected)


@pytest.mark.parametrize("metric", [cf.tl.mmd, cf.tl.energy_distance, cf.tl.wasserstein])
def test_identity_and_symmetry(metric):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 4)), rng.normal(1.0, size=(50, 4))
    assert metric(x, x) == pytest.approx(0.0, abs=1e-6)
    assert metric(x, y) == pytest.approx(metric(y, x), rel=1e-6)
    assert metric(x, y) > 0.01


def test_distances_shrink_as_gaussians_approach():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 3))
    fixed = {"widths": [1.0, 2.0]}
    values = [cf.tl.mmd(x, rng.normal(shift, size=(200, 3)), **fixed) for shift in (3.0, 1.5, 0.5)]
    assert values[0] > values[1] > values[2]
    energies = [cf.tl.energy_distance(x, rng.normal(shift, size=(200, 3))) for shift in (3.0, 1.5, 0.5)]
    assert energies[0] > energies[1] > energies[2]


def test_wasserstein_of_shift_and_sinkhorn():
    x = np.random.default_rng(2).normal(size=(100, 2))
    assert cf.tl.wasserstein(x, x + np.array([3.0, 4.0])) == pytest.approx(5.0, rel=1e-6)
    assert cf.tl.wasserstein(x, x + np.array([3.0, 4.0]), method="sinkhorn") == pytest.approx(5.0, rel=0.05)


def screen(seed: int = 0) -> tuple[ad.AnnData, dict[str, np.ndarray]]:
    """Genes respond additively: control mean 2, A adds +1 on genes 0-4, B adds +0.5 on genes 3-9."""
    rng = np.random.default_rng(seed)
    shifts = {"A": np.r_[np.ones(5), np.zeros(15)], "B": np.r_[np.zeros(3), np.full(7, 0.5), np.zeros(10)]}
    rows, labels = [], []
    for cond in ["control", "A", "B", "A+B"]:
        shift = sum((shifts[p] for p in cond.split("+") if p != "control"), np.zeros(20))
        rows.append(2.0 + shift + rng.normal(0, 0.1, size=(300, 20)))
        labels += [cond] * 300
    obs = pd.DataFrame({"condition": labels}, index=[f"c{i}" for i in range(len(labels))])
    return ad.AnnData(X=np.clip(np.concatenate(rows), 0, None).astype(np.float32), obs=obs), shifts


def test_additive_baseline_recovers_known_combination():
    adata, shifts = screen()
    train = adata[adata.obs["condition"] != "A+B"].copy()
    pred = additive_baseline(train, "A+B", perturbation_key="condition", n_cells=300)
    truth = 2.0 + shifts["A"] + shifts["B"]
    np.testing.assert_allclose(pred.X.mean(axis=0), truth, atol=0.03)
    real = adata[adata.obs["condition"].isin(["A+B", "control"])].copy()
    scores = cf.tl.evaluate(pred, real, "condition", n_top_degs=5, model_name="additive")
    ctrl = cf.tl.evaluate(
        control_baseline(train, "A+B", perturbation_key="condition", n_cells=300),
        real,
        "condition",
        n_top_degs=5,
        model_name="control",
    )
    both = pd.concat([scores, ctrl]).pivot(index="metric", columns="model", values="value")
    assert both.loc["r2_delta_all", "additive"] > 0.95
    assert both.loc["r2_delta_all", "control"] < 0.05
    assert both.loc["energy_distance", "additive"] < both.loc["energy_distance", "control"]
    summary = cf.tl.summarize(pd.concat([scores, ctrl]))
    assert set(summary.index.get_level_values("model")) == {"additive", "control"}


def test_additive_baseline_reports_missing_singles():
    adata, _ = screen()
    train = adata[~adata.obs["condition"].isin(["A+B", "B"])].copy()
    pred = additive_baseline(train, "A+B", perturbation_key="condition", n_cells=10)
    assert pred.uns["additive"]["missing_singles"] == {"A+B": ["B"]}


def test_top_degs_find_the_shifted_genes():
    adata, _ = screen()
    real = adata[adata.obs["condition"] == "A"]
    control = adata[adata.obs["condition"] == "control"]
    assert set(cf.tl.top_degs(real, control, 5)) == {f"{i}" for i in range(5)}


@pytest.mark.parametrize("source", ["control", "noise"])
def test_cfm_baseline_learns_an_unseen_combination(source):
    from calmflow_sc.baselines import CFMBaseline

    adata, shifts = screen()
    train = adata[adata.obs["condition"] != "A+B"].copy()
    model = CFMBaseline(train, perturbation_key="condition", n_components=8, source=source, hidden=128, n_layers=3)
    model.train(max_steps=600, batch_size=128)
    assert np.mean(model.history[-50:]) < np.mean(model.history[:50])
    pred = model.predict_perturbation("A+B", n_cells=200)
    truth = 2.0 + shifts["A"] + shifts["B"]
    control_error = np.abs(2.0 - truth).mean()
    assert np.abs(pred.X.mean(axis=0) - truth).mean() < 0.5 * control_error
    with pytest.raises(ValueError, match="never seen"):
        model.predict_perturbation("A+Z", n_cells=2)


def test_mean_baseline_is_the_training_mean():
    from calmflow_sc.baselines import mean_baseline

    adata, shifts = screen()
    pred = mean_baseline(adata, ["A", "control"], perturbation_key="condition")
    assert pred.n_obs == 2 and list(pred.obs["condition"]) == ["A", "control"]
    np.testing.assert_allclose(pred.X[0], 2.0 + shifts["A"], atol=0.03)
    with pytest.raises(ValueError, match="no training cells"):
        mean_baseline(adata, "Z", perturbation_key="condition")
