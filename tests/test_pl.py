from __future__ import annotations

from types import SimpleNamespace

import anndata as ad
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection, PathCollection
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

import calmflow_sc as cf

N_GENES = 30
GENES = [f"G{i}" for i in range(N_GENES)]


def _cells(labels: list[str], seed: int, prefix: str, effect: float) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    labels_arr = np.asarray(labels)
    x = rng.gamma(2.0, 0.5, size=(len(labels), N_GENES))
    # each condition raises its own 4 genes and lowers gene 29, so its DEGs are known
    shifts = {"A": [0, 1, 2, 3], "B": [4, 5, 6, 7], "A+B": [0, 1, 4, 5]}
    for condition, genes in shifts.items():
        rows = labels_arr == condition
        x[np.ix_(rows, genes)] += effect * np.array([3.0, 2.5, 2.0, 1.5])
        x[rows, 29] *= 0.2
    x[rng.uniform(size=x.shape) < 0.2] = 0.0  # dropouts, so that fractions of expressing cells vary
    obs = pd.DataFrame({"condition": labels, "cell_type": "k562"}, index=[f"{prefix}{i}" for i in range(len(labels))])
    return ad.AnnData(X=x.astype(np.float32), obs=obs, var=pd.DataFrame(index=GENES))


@pytest.fixture(scope="module")
def real() -> ad.AnnData:
    return _cells(["control"] * 60 + ["A"] * 40 + ["B"] * 40 + ["A+B"] * 40, 0, "r", 1.0)


@pytest.fixture(scope="module")
def pred() -> ad.AnnData:
    p = _cells(["A"] * 30 + ["B"] * 30 + ["A+B"] * 30, 1, "p", 0.8)
    p.obs["generated"] = True
    return p


@pytest.fixture(scope="module")
def joint(pred, real) -> ad.AnnData:
    return cf.tl.embed_joint(pred, real, perturbation_key="condition", control_value="control", method="pca", n_comps=5)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _points(ax) -> list[PathCollection]:
    return [c for c in ax.collections if isinstance(c, PathCollection) and len(c.get_offsets())]


def _hex_colours(collection) -> list[str]:
    return [to_hex(c, keep_alpha=False) for c in collection.get_facecolors()]


# ------------------------------------------------------------------ conventions
def test_return_conventions_and_save(pred, real, tmp_path):
    kwargs = {"perturbation_key": "condition", "condition": "A", "n_top_degs": 5, "n_labels": 2}
    fig = cf.pl.mean_expression(pred, real, **kwargs, return_fig=True, show=False)
    assert isinstance(fig, Figure)
    ax = cf.pl.mean_expression(pred, real, **kwargs, show=False)
    assert isinstance(ax, matplotlib.axes.Axes)
    assert not plt.isinteractive()
    assert isinstance(cf.pl.mean_expression(pred, real, **kwargs), matplotlib.axes.Axes)  # show=None, Agg: not shown
    path = tmp_path / "means.png"
    cf.pl.mean_expression(pred, real, **kwargs, save=path, show=False)
    assert path.stat().st_size > 1000


# ------------------------------------------------------------------ embedding
def test_embedding_two_panels_colours_and_markers(joint):
    fig = cf.pl.embedding(joint, basis="X_joint_pca", color=["condition", "source"], return_fig=True)
    axes = fig.axes
    assert [a.get_title() for a in axes] == ["condition", "source"]
    n_real, n_gen = int((~joint.obs["generated"]).sum()), int(joint.obs["generated"].sum())
    for a in axes:
        collections = _points(a)
        assert [len(c.get_offsets()) for c in collections] == [n_real, n_gen]  # real circles, generated triangles
        assert a.get_xlabel() == "PC1" and a.get_ylabel() == "PC2"
    condition_colours = set(_hex_colours(_points(axes[0])[0])) | set(_hex_colours(_points(axes[0])[1]))
    assert len(condition_colours) == 4  # A, B, A+B, control
    gen_colours = set(_hex_colours(_points(axes[0])[1]))
    assert len(gen_colours) == 3  # generated cells have no control
    assert set(_hex_colours(_points(axes[1])[0])) != set(_hex_colours(_points(axes[1])[1]))
    assert len(set(_hex_colours(_points(axes[1])[1]))) == 1
    legend_text = [t.get_text() for t in axes[0].get_legend().get_texts()]
    assert {"A", "B", "A+B", "control", "real", "generated"} <= set(legend_text)
    # coordinates drawn are the embedding's
    drawn = np.vstack([c.get_offsets() for c in _points(axes[0])])
    np.testing.assert_allclose(np.sort(drawn[:, 0]), np.sort(joint.obsm["X_joint_pca"][:, 0]), rtol=1e-5)


def test_embedding_default_color_palette_and_ax(joint):
    fig = cf.pl.embedding(joint, basis="X_joint_pca", return_fig=True)
    assert [a.get_title() for a in fig.axes] == ["condition", "source"]
    fig, ax = plt.subplots()
    out = cf.pl.embedding(
        joint,
        basis="X_joint_pca",
        color="condition",
        ax=ax,
        palette={"A": "red", "B": "blue", "A+B": "green", "control": "black"},
        show=False,
    )
    assert out is ax
    assert len(fig.axes) == 1
    colours = set(_hex_colours(_points(ax)[0])) | set(_hex_colours(_points(ax)[1]))
    assert colours == {"#ff0000", "#0000ff", "#008000", "#000000"}


def test_embedding_gene_colour_has_colorbar(joint):
    fig = cf.pl.embedding(joint, basis="X_joint_pca", color="G0", return_fig=True)
    assert len(fig.axes) == 2  # panel + colour bar
    values = np.concatenate([c.get_array() for c in _points(fig.axes[0])])
    expected = np.asarray(joint[:, "G0"].X).ravel()
    np.testing.assert_allclose(np.sort(values), np.sort(expected), rtol=1e-6)


def test_embedding_bad_input(joint):
    with pytest.raises(KeyError, match="X_joint_umap"):
        cf.pl.embedding(joint)
    with pytest.raises(KeyError, match="'nope' is neither"):
        cf.pl.embedding(joint, basis="X_joint_pca", color="nope")
    with pytest.raises(ValueError, match="components"):
        cf.pl.embedding(joint, basis="X_joint_pca", components=(0, 7))
    _, ax = plt.subplots()
    with pytest.raises(ValueError, match="ax= draws one panel"):
        cf.pl.embedding(joint, basis="X_joint_pca", color=["condition", "source"], ax=ax)


# ------------------------------------------------------------------ mean expression
def test_mean_expression_points_labels_and_r2(pred, real):
    ax = cf.pl.mean_expression(pred, real, perturbation_key="condition", condition="A+B", n_top_degs=6, n_labels=4)
    collections = _points(ax)
    assert [len(c.get_offsets()) for c in collections] == [N_GENES - 6, 6]
    degs = cf.tl.top_degs(real[real.obs["condition"] == "A+B"], real[real.obs["condition"] == "control"], 6)
    assert {"G0", "G1", "G4", "G5"} <= set(degs)  # the genes A+B shifts
    labels = [t.get_text() for t in ax.texts]
    assert labels == degs[:4]
    r2 = cf.tl.r2_mean(pred[pred.obs["condition"] == "A+B"], real[real.obs["condition"] == "A+B"])["r2"]
    assert f"R² = {r2:.3f}" in ax.get_title()
    assert "A+B" in ax.get_title()
    deg_r2 = cf.tl.r2_mean(pred[pred.obs["condition"] == "A+B"], real[real.obs["condition"] == "A+B"], genes=degs)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert f"top 6 DEGs (R² = {deg_r2['r2']:.3f})" in legend
    measured = cf.tl.mean_expression(real[real.obs["condition"] == "A+B"])
    np.testing.assert_allclose(np.sort(np.vstack([c.get_offsets() for c in collections])[:, 0]), np.sort(measured))
    assert "measured" in ax.get_xlabel() and "predicted" in ax.get_ylabel()


def test_mean_expression_without_degs_and_into_ax(pred, real):
    no_control = real[real.obs["condition"] != "control"]
    fig, ax = plt.subplots()
    out = cf.pl.mean_expression(
        pred, no_control, perturbation_key="condition", condition="A", n_top_degs=0, n_labels=0, ax=ax, show=False
    )
    assert out is ax and len(fig.axes) == 1
    assert [len(c.get_offsets()) for c in _points(ax)] == [N_GENES]
    assert len(ax.texts) == 0


def test_mean_expression_bad_input(pred, real):
    with pytest.raises(KeyError, match=r"pred\.obs\['condition'\] has no cells of 'C'"):
        cf.pl.mean_expression(pred, real, perturbation_key="condition", condition="C")
    with pytest.raises(KeyError, match=r"no column 'perturbation'"):
        cf.pl.mean_expression(pred, real, perturbation_key="perturbation", condition="A")
    with pytest.raises(KeyError, match="has no cells of 'ctrl'"):
        cf.pl.mean_expression(pred, real, perturbation_key="condition", condition="A", control_value="ctrl")
    with pytest.raises(ValueError, match="same genes"):
        cf.pl.mean_expression(pred[:, :10], real, perturbation_key="condition", condition="A")
    with pytest.raises(ValueError, match="n_labels"):
        cf.pl.mean_expression(pred, real, perturbation_key="condition", condition="A", n_top_degs=3, n_labels=5)


# ------------------------------------------------------------------ metrics
@pytest.fixture(scope="module")
def results() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    rows = [
        {"model": model, "condition": c, "metric": m, "value": float(rng.uniform()), "n_pred": 10, "n_real": 10}
        for model in ("calmflow", "additive", "control")
        for c in ("A", "B", "A+B")
        for m in ("mmd", "r2_all")
    ]
    return pd.DataFrame(rows)


def test_metrics_heatmap_layout_and_mean(results):
    fig = cf.pl.metrics(results, return_fig=True)
    panels = [a for a in fig.axes if a.get_images()]
    assert len(panels) == 2 and len(fig.axes) == 4  # two heatmaps and their colour bars
    mmd = panels[0]
    assert "mmd" in mmd.get_title() and "lower is better" in mmd.get_title()
    assert "higher is better" in panels[1].get_title()
    assert [t.get_text() for t in mmd.get_yticklabels()] == ["A", "B", "A+B", "mean"]
    assert [t.get_text() for t in mmd.get_xticklabels()] == ["calmflow", "additive", "control"]
    image = mmd.get_images()[0].get_array()
    assert image.shape == (4, 3)
    sub = results[results["metric"] == "mmd"]
    means = sub.groupby("model", sort=False)["value"].mean()
    np.testing.assert_allclose(image[3], means[["calmflow", "additive", "control"]].to_numpy())
    texts = [t.get_text() for t in mmd.texts]
    assert len(texts) == 12 and f"{means['additive']:.3f}" in texts


def test_metrics_bars_and_median(results):
    ax = cf.pl.metrics(results, metric="r2_all", kind="bar", summary="median", models=["control", "calmflow"])
    assert len(ax.patches) == 4 * 2
    assert [t.get_text() for t in ax.get_xticklabels()] == ["A", "B", "A+B", "median"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["control", "calmflow"]
    sub = results[(results["metric"] == "r2_all") & (results["model"] == "calmflow")]
    heights = sorted(p.get_height() for p in ax.patches)
    assert np.isclose(heights, sub["value"].median()).any()
    assert len({to_hex(p.get_facecolor()) for p in ax.patches}) == 2


def test_metrics_into_ax_and_bad_input(results):
    _, ax = plt.subplots()
    assert cf.pl.metrics(results, metric="mmd", ax=ax, show=False) is ax
    with pytest.raises(KeyError, match=r"metrics \['wasserstein'\] not in results"):
        cf.pl.metrics(results, metric="wasserstein")
    with pytest.raises(KeyError, match="lacks columns"):
        cf.pl.metrics(results.drop(columns="model"))
    with pytest.raises(ValueError, match="kind must be"):
        cf.pl.metrics(results, kind="violin")
    with pytest.raises(KeyError, match="models"):
        cf.pl.metrics(results, models=["scgpt"])
    with pytest.raises(ValueError, match="ax= draws one panel"):
        cf.pl.metrics(results, ax=ax)


# ------------------------------------------------------------------ trajectories
def _flows(n: int = 20, t: int = 6, d: int = 4) -> np.ndarray:
    rng = np.random.default_rng(0)
    x0, x1 = rng.normal(size=(n, d)), rng.normal(size=(n, d)) + 3
    times = np.linspace(0, 1, t)[None, :, None]
    return (1 - times) * x0[:, None] + times * x1[:, None]


def test_trajectories_segments_and_markers():
    traj = _flows()
    real = np.random.default_rng(1).normal(size=(15, 4)) + 3
    ax = cf.pl.trajectories(traj, n_show=8, real=real)
    lines = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert len(lines) == 1 and len(lines[0].get_segments()) == 8 * 5
    np.testing.assert_allclose(lines[0].get_array()[:5], [0.1, 0.3, 0.5, 0.7, 0.9])  # coloured by time
    counts = [len(c.get_offsets()) for c in _points(ax)]
    assert counts == [15, 8, 8]  # measured cells, starts, ends
    starts, ends = (c.get_offsets() for c in _points(ax)[1:])
    assert np.isin(np.round(ends[:, 0], 6), np.round(traj[:, -1, 0], 6)).all()
    assert np.isin(np.round(starts[:, 0], 6), np.round(traj[:, 0, 0], 6)).all()
    assert ax.get_xlabel() == "PC1" and ax.get_ylabel() == "PC2"
    assert len(ax.figure.axes) == 2  # colour bar of time


def test_trajectories_projection_dims_and_all():
    traj = _flows(n=5)
    ax = cf.pl.trajectories(traj, dims=(2, 3), n_show=None)
    segs = next(c for c in ax.collections if isinstance(c, LineCollection)).get_segments()
    assert len(segs) == 5 * 5
    np.testing.assert_allclose(segs[0][0], traj[0, 0, [2, 3]])
    matrix = np.zeros((4, 2))
    matrix[0, 0] = matrix[1, 1] = 2.0
    ax = cf.pl.trajectories(traj, projection=matrix, show=False)
    segs = next(c for c in ax.collections if isinstance(c, LineCollection)).get_segments()
    np.testing.assert_allclose(segs[0][0], 2 * traj[0, 0, :2])
    ax = cf.pl.trajectories(traj, projection=lambda a: a[:, :2] - 1, show=False)
    segs = next(c for c in ax.collections if isinstance(c, LineCollection)).get_segments()
    np.testing.assert_allclose(segs[0][0], traj[0, 0, :2] - 1)
    assert ax.get_xlabel() == "projection 1"


def test_trajectories_bad_input():
    with pytest.raises(ValueError, match="ndim 2"):
        cf.pl.trajectories(np.zeros((5, 4)))
    with pytest.raises(ValueError, match="dims"):
        cf.pl.trajectories(_flows(), dims=(0, 9))
    with pytest.raises(ValueError, match=r"real must have shape \(n_real, 4\)"):
        cf.pl.trajectories(_flows(), real=np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"projection matrix must have shape \(4, 2\)"):
        cf.pl.trajectories(_flows(), projection=np.zeros((3, 2)))


# ------------------------------------------------------------------ history
HISTORY_KEYS = (
    "train_loss",
    "validation_loss",
    "reconstruction_train",
    "reconstruction_validation",
    "kl_train",
    "kl_validation",
)


@pytest.fixture(scope="module")
def history() -> dict[str, pd.DataFrame]:
    epochs = pd.Index(range(5), name="epoch")
    return {k: pd.DataFrame({k: np.linspace(2, 1, 5) + i}, index=epochs) for i, k in enumerate(HISTORY_KEYS)}


def test_history_panels_from_model_like_object(history):
    model = SimpleNamespace(history=history)
    fig = cf.pl.history(model, return_fig=True)
    assert [a.get_title() for a in fig.axes] == ["loss (reconstruction + β KL)", "reconstruction", "KL"]
    for a, (train_key, val_key) in zip(fig.axes, zip(HISTORY_KEYS[::2], HISTORY_KEYS[1::2], strict=True), strict=True):
        lines = a.get_lines()
        assert len(lines) == 2
        assert [ln.get_label() for ln in lines] == ["train", "validation"]
        assert lines[0].get_linestyle() == "-" and lines[1].get_linestyle() == "--"
        np.testing.assert_allclose(lines[0].get_ydata(), history[train_key][train_key])
        np.testing.assert_allclose(lines[1].get_ydata(), history[val_key][val_key])
        assert a.get_xlabel() == "epoch"


def test_history_keys_dataframe_and_ax(history):
    frame = pd.DataFrame({k: v[k] for k, v in history.items()})
    fig = cf.pl.history(frame, keys=["kl_train", "kl_validation"], return_fig=True)
    assert len(fig.axes) == 1 and len(fig.axes[0].get_lines()) == 2
    fig, ax = plt.subplots()
    assert cf.pl.history(history, ax=ax, show=False) is ax
    assert [ln.get_label() for ln in ax.get_lines()] == list(HISTORY_KEYS)


def test_history_bad_input(history):
    with pytest.raises(KeyError, match=r"no keys \['elbo'\]"):
        cf.pl.history(history, keys=["elbo"])
    with pytest.raises(ValueError, match="empty"):
        cf.pl.history(SimpleNamespace(history={}))
    with pytest.raises(TypeError, match="expected a CaLMFlowModel"):
        cf.pl.history(SimpleNamespace(history=[1, 2]))


# ------------------------------------------------------------------ response genes
def test_response_genes_heatmap(pred, real):
    ax = cf.pl.response_genes(pred, real, perturbation_key="condition", conditions=["A", "B"], n_genes=3)
    rows = [t.get_text() for t in ax.get_yticklabels()]
    assert rows == ["A · measured", "A · predicted", "B · measured", "B · predicted"]
    genes = [t.get_text() for t in ax.get_xticklabels()]
    assert len(genes) == 6  # A's top 3 genes, then B's
    assert genes[:2] == ["G0", "G1"] and set(genes[:3]) <= {"G0", "G1", "G2", "G3"}
    assert genes[3:5] == ["G4", "G5"] and set(genes[3:]) <= {"G4", "G5", "G6", "G7"}
    image = ax.get_images()[0]
    values = image.get_array()
    assert values.shape == (4, 6)
    control_mean = cf.tl.mean_expression(real[real.obs["condition"] == "control"])
    measured_a = cf.tl.mean_expression(real[real.obs["condition"] == "A"]) - control_mean
    predicted_b = cf.tl.mean_expression(pred[pred.obs["condition"] == "B"]) - control_mean
    idx = [GENES.index(g) for g in genes]
    np.testing.assert_allclose(values[0], measured_a[idx], rtol=1e-5)
    np.testing.assert_allclose(values[3], predicted_b[idx], rtol=1e-5)
    lo, hi = image.get_clim()
    assert lo == -hi and hi == pytest.approx(np.abs(values).max())


def test_response_genes_dotplot_and_defaults(pred, real):
    fig = cf.pl.response_genes(pred, real, perturbation_key="condition", n_genes=2, kind="dotplot", return_fig=True)
    ax = fig.axes[0]
    rows = [t.get_text() for t in ax.get_yticklabels()]
    assert rows[::2] == ["A · measured", "A+B · measured", "B · measured"]  # sorted (obs column not categorical)
    n_genes = len(ax.get_xticklabels())
    assert 2 <= n_genes <= 6
    dots = _points(ax)
    assert len(dots) == 1 and len(dots[0].get_offsets()) == 6 * n_genes
    assert len(set(np.round(dots[0].get_sizes(), 6))) > 1  # size = fraction expressing
    degs = cf.pl.response_genes(
        pred, real, perturbation_key="condition", conditions="A", n_genes=4, gene_selection="degs", show=False
    )
    assert {t.get_text() for t in degs.get_xticklabels()} == set(
        cf.tl.top_degs(real[real.obs["condition"] == "A"], real[real.obs["condition"] == "control"], 4)
    )


def test_response_genes_bad_input(pred, real):
    with pytest.raises(KeyError, match="has no cells of 'Z'"):
        cf.pl.response_genes(pred, real, perturbation_key="condition", conditions=["Z"])
    with pytest.raises(ValueError, match="kind must be"):
        cf.pl.response_genes(pred, real, perturbation_key="condition", kind="violin")
    with pytest.raises(KeyError, match="has no cells of 'ctrl'"):
        cf.pl.response_genes(pred, real, perturbation_key="condition", control_value="ctrl")
    with pytest.raises(ValueError, match="n_genes"):
        cf.pl.response_genes(pred, real, perturbation_key="condition", n_genes=0)


def test_pl_and_tl_are_attributes_of_the_package():
    import calmflow_sc
    from calmflow_sc import pl

    assert calmflow_sc.pl is pl and {"pl", "tl"} <= set(dir(calmflow_sc))
    assert callable(calmflow_sc.tl.embed_joint) and callable(pl.response_genes)
    with pytest.raises(AttributeError, match="no attribute 'plotting'"):
        _ = calmflow_sc.plotting
