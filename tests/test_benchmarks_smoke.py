"""Smoke tests: the benchmark scripts' ``main()`` runs end to end with tiny settings (so they cannot rot)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module", autouse=True)
def _benchmarks_on_path():
    sys.path.insert(0, str(BENCHMARKS))
    yield
    sys.path.remove(str(BENCHMARKS))


def test_toy2d_ablations_main(tmp_path):
    import toy2d_ablations

    res = toy2d_ablations.main(
        ["--budget", "0.5", "--n-eval", "48", "--ks", "1", "--ps", "8", "4", "--ns", "16", "--betas", "0.001",
         "--select-temperatures", "1.0", "--temperatures", "0.5", "1.0", "--out", str(tmp_path)]
    )  # fmt: skip
    assert [c["factor"] for c in res["configs"]] == ["default", "p"]
    assert all(c["steps"] >= 1 and c["w2"] > 0 for c in res["configs"])
    assert [s["temperature"] for s in res["temperature_sweep"]] == [0.5, 1.0]
    assert res["floor_w2"] > 0
    saved = json.loads((tmp_path / "toy2d_ablations.json").read_text())
    assert saved["configs"][1]["p"] == 4
    assert "| 4 |" in (tmp_path / "toy2d_ablations.md").read_text()


def test_toy2d_ablations_rejects_bad_values(tmp_path):
    import toy2d_ablations

    with pytest.raises(ValueError, match="--ns"):
        toy2d_ablations.main(["--ns", "1", "--out", str(tmp_path)])


def test_highdim_main(tmp_path):
    import highdim

    res = highdim.main(
        ["--dims", "12", "--budget", "0.5", "--n-eval", "48", "--temperatures", "1.0", "--out", str(tmp_path)]
    )
    entry = res["dims"]["12"]
    for model in ("floor", "source", "calmflow", "cfm"):
        assert entry[model]["mmd"] >= 0 and entry[model]["w2"] > 0
    assert entry["calmflow"]["steps"] >= 1 and entry["cfm"]["steps"] >= 1
    assert (tmp_path / "highdim.md").read_text().count("| 12 |") == 4


def test_gaussian_mixture_shapes_and_seed():
    import numpy as np

    import highdim

    mix = highdim.GaussianMixture(3, 7, 0.5, seed=1)
    a = mix(20, np.random.default_rng(0))
    assert a.shape == (20, 7) and a.dtype == np.float32
    assert np.array_equal(highdim.GaussianMixture(3, 7, 0.5, seed=1).means, mix.means)
    with pytest.raises(ValueError, match="std"):
        highdim.GaussianMixture(3, 7, 0.0, seed=1)


def test_mean_shift_transfer(norman_path):
    import anndata as ad
    import numpy as np

    import cell_line_transfer as clt

    adata = ad.read_h5ad(norman_path)
    adata = adata[adata.obs["cell_type"].isin(["A172", "T98G", "U87MG"]).to_numpy()].copy()  # as the script
    labels, lines = adata.obs["condition"].astype(str), adata.obs["cell_type"].astype(str)
    train = adata[~((labels == "SGK1") & (lines == "U87MG")).to_numpy()].copy()
    out = clt.mean_shift_transfer(train, "SGK1", "U87MG", n_cells=30, seed=0)
    assert out.shape == (30, adata.n_vars) and out.uns["mean_shift"]["lines"] == ["A172", "T98G"]
    assert (out.obs["condition"] == "SGK1").all() and (out.obs["cell_type"] == "U87MG").all()
    x = np.asarray(train.X.todense() if hasattr(train.X, "todense") else train.X)
    tl, tc = train.obs["condition"].astype(str).to_numpy(), train.obs["cell_type"].astype(str).to_numpy()
    shift = np.mean(
        [x[(tl == "SGK1") & (tc == c)].mean(0) - x[(tl == "control") & (tc == c)].mean(0) for c in ("A172", "T98G")], 0
    )
    controls = x[(tl == "control") & (tc == "U87MG")]
    # every generated cell is a U87MG control cell plus the averaged shift (clipped at zero)
    expected = np.clip(controls[:, None, :] + shift, 0, None)
    assert all(np.abs(expected - cell).max(axis=1).min() < 1e-5 for cell in out.X)
    with pytest.raises(ValueError, match="hold it out"):
        clt.mean_shift_transfer(adata, "SGK1", "U87MG", n_cells=5)


def test_cell_line_transfer_main(norman_path, tmp_path):
    import cell_line_transfer as clt

    res = clt.main(
        ["--data", str(norman_path), "--max-epochs", "1", "--max-steps", "3", "--backbone", "gpt-neox-tiny",
         "--n-components", "8", "--out", str(tmp_path)]
    )  # fmt: skip
    models = {r["model"] for r in res["rows"]}
    assert models == {"control", "mean-shift", "calmflow-control", "cfm-control"}
    assert {r["condition"] for r in res["rows"]} == {"SGK1"}
    assert all(r["n_pred"] == res["n_cells"] for r in res["rows"])
    assert "mean-shift" in (tmp_path / "cell_line_transfer.md").read_text()


def test_peer_rows_join_only_on_the_same_split(tmp_path):
    import anndata as ad

    from peers.norman_hook import PEERS_RESULT, peer_rows, split_fingerprint

    train = ad.AnnData(np.zeros((4, 3), dtype=np.float32))
    train.obs_names = [f"c{i}" for i in range(4)]
    train.var_names = ["g0", "g1", "g2"]
    row = {"model": "cpa 0.8.1 (300 s)", "metric": "mmd", "value": 0.1, "n_pred": 5, "n_real": 5}
    payload = {
        "split_fingerprint": split_fingerprint(train, ["A+B", "C+D"], ["A+B"]),
        "per_condition": [
            {**row, "condition": "A+B", "peer": True},
            {**row, "condition": "C+D", "peer": True},
            {**row, "model": "control", "condition": "A+B", "peer": False},
        ],
    }
    (tmp_path / PEERS_RESULT).write_text(json.dumps(payload))
    rows = peer_rows(tmp_path, train, ["A+B", "C+D"], ["A+B"], {"A+B"})
    assert list(rows["model"]) == ["cpa 0.8.1 (300 s)"] and list(rows["condition"]) == ["A+B"]
    assert "peer" not in rows.columns
    assert peer_rows(tmp_path, train, ["A+B"], ["A+B"], {"A+B"}).empty  # another split
    assert peer_rows(tmp_path / "none", train, ["A+B", "C+D"], ["A+B"], {"A+B"}).empty


def test_assemble_results(tmp_path):
    import assemble_results

    toy = {
        "benchmark": "toy2d",
        "git_commit": "abc1234",
        "budget_seconds_per_model": 10,
        "tasks": {
            "t": {
                "noise_floor_w2": 0.5,
                "calmflow_w2": 1.0,
                "cfm_w2": 0.6,
                "calmflow_over_floor": 2,
                "cfm_over_floor": 1.2,
            }
        },
    }
    (tmp_path / "toy2d.json").write_text(json.dumps(toy))
    (tmp_path / "toy2d.md").write_text("# toy")
    (tmp_path / "toy2d_explore.json").write_text(json.dumps(toy))
    text = assemble_results.main(["--results", str(tmp_path), "--link-prefix", "benchmarks/results/"])
    assert "| t | 0.500 | 1.000 (2.00x) | 0.600 (1.20x) |" in text
    assert "(benchmarks/results/toy2d.md)" in text and "toy2d_explore.json" in text
    assert (tmp_path / "README_table.md").read_text() == text
    with pytest.raises(FileNotFoundError):
        assemble_results.main(["--results", str(tmp_path / "empty")])


def test_metrics_speed_main(tmp_path):
    import metrics_speed

    res = metrics_speed.main(["--n-cells", "300", "--dims", "4", "--repeats", "1", "--out", str(tmp_path)])
    values = {r["metric"]: r["value"] for r in res["rows"]}
    assert len(values) == 5 and all(r["seconds"] >= 0 for r in res["rows"])
    # the clouds are 0.5 apart in every dimension: every distance sees it (two draws of one cloud of
    # 300 cells give an energy distance of about 0.01, the bias of the V-statistic)
    assert values["mmd"] > 0 and values["energy_distance"] > 0.1
    # with squared distances the statistic is 2 ||mean(x) - mean(y)||^2, about 2 * 4 * 0.5**2 here
    assert values["energy_distance (squared)"] == pytest.approx(2.0, rel=0.25)
    assert values["wasserstein (exact, 2,000-cell subsamples)"] > 0.5
    assert (tmp_path / "metrics_speed.md").read_text().count("| 4 |") == 5
