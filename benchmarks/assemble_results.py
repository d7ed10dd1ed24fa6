"""Collect every ``benchmarks/results/*.json`` into one compact Markdown overview.

One table per benchmark with its headline metric(s) per model, linking to the full Markdown report
of each run. Files whose name is not the benchmark's own (explorations, e.g.
``norman_combos_explore_*.json``) and benchmarks this script does not know are listed as links.

Run: ``python benchmarks/assemble_results.py`` (last step of ``make bench``).
Writes ``benchmarks/results/README_table.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd

RESULTS = Path(__file__).resolve().parent / "results"
LOWER_IS_BETTER = {"energy_distance", "mmd"}


def _x(value: float | None) -> str:
    return "" if value is None else f" ({value:.2f}x)"


def _provenance(r: dict, link: str) -> str:
    commit = f" (commit {r['git_commit']})" if r.get("git_commit") else ""
    return f"Full report: [{link.rsplit('/', 1)[-1]}]({link}){commit}."


def toy2d(r: dict, link: str) -> list[str]:
    """Toy 2-D: W2 per task and model with the noise floor."""
    lines = [
        f"Exact W2, 1,000 vs 1,000 samples, {r['budget_seconds_per_model']:g} s training per model "
        "(x the floor between two target draws). " + _provenance(r, link),
        "",
        "| task | floor | CaLMFlow | CFM |",
        "|---|---|---|---|",
    ]
    for task, t in r["tasks"].items():
        lines.append(
            f"| {task} | {t['noise_floor_w2']:.3f} | {t['calmflow_w2']:.3f}{_x(t['calmflow_over_floor'])} | "
            f"{t['cfm_w2']:.3f}{_x(t['cfm_over_floor'])} |"
        )
    return lines


def toy2d_ablations(r: dict, link: str) -> list[str]:
    """Ablations: W2 (x floor) per configuration, and the temperature sweep."""
    lines = [
        f"{r['task']}, {r['budget']}; exact W2 (x floor {r['floor_w2']:.3f}); one factor changed at a time from "
        "K=1, P=8, N=16, beta=1e-3. " + _provenance(r, link),
        "",
        "| changed | W2 (x floor) | steps |",
        "|---|---|---|",
    ]
    for c in r["configs"]:
        name = "defaults" if c["factor"] == "default" else f"{c['factor'].upper() if c['factor'] != 'beta' else 'beta'}"
        name += "" if c["factor"] == "default" else f"={c[c['factor']]:g}"
        lines.append(f"| {name} | {c['w2']:.3f}{_x(c['w2_over_floor'])} | {c['steps']} |")
    if r.get("temperature_sweep"):
        sweep = ", ".join(f"T={s['temperature']:g}: {s['w2_over_floor']:.2f}x" for s in r["temperature_sweep"])
        lines += ["", f"Sampling temperature on the default model (W2 x floor): {sweep}."]
    return lines


def highdim(r: dict, link: str) -> list[str]:
    """High-dimensional mixtures: MMD^2 and W2 per dimension and model."""
    lines = [
        f"{r['task']}; {r['budget_seconds_per_model']:g} {r.get('clock', 'wall')} seconds of training per model; "
        "MMD^2 and exact W2 (x the floor between two target draws). " + _provenance(r, link),
        "",
        "| D | model | MMD^2 | W2 |",
        "|---|---|---|---|",
    ]
    for dim, e in r["dims"].items():
        lines.append(f"| {dim} | floor | {e['floor']['mmd']:.4f} | {e['floor']['w2']:.3f} |")
        for model, label in (("source", "source (no transport)"), ("calmflow", "CaLMFlow"), ("cfm", "CFM")):
            m = e[model]
            lines.append(
                f"| {dim} | {label} | {m['mmd']:.4f}{_x(m.get('mmd_over_floor'))} | "
                f"{m['w2']:.3f}{_x(m.get('w2_over_floor'))} |"
            )
    return lines


def _metric_table(summary: pd.DataFrame, metrics: list[str], label: str = "model") -> list[str]:
    mean = summary.pivot_table(index="model", columns="metric", values="mean", sort=False)
    metrics = [m for m in metrics if m in mean.columns]
    lines = [f"| {label} | " + " | ".join(f"{m} (mean)" for m in metrics) + " |", "|---|" + "---|" * len(metrics)]
    best = {m: (mean[m].idxmin() if m in LOWER_IS_BETTER else mean[m].idxmax()) for m in metrics}
    for model, row in mean.iterrows():
        cells = [f"**{row[m]:.4f}**" if best[m] == model else f"{row[m]:.4f}" for m in metrics]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return lines


HEADLINE = ["energy_distance", "mmd", "r2_delta_top_degs"]


def norman_combos(r: dict, link: str) -> list[str]:
    """Held-out Norman doubles: headline metrics per model, split 'both singles seen'."""
    summary = pd.DataFrame(r["summary"])
    part = summary[summary["split"] == "both singles seen"]
    return [
        "Held-out doubles with both singles measured (K562), means over conditions; bold = best. "
        + _provenance(r, link),
        "",
        *_metric_table(part, HEADLINE),
    ]


def peers_norman_combos(r: dict, link: str) -> list[str]:
    """Peers (CPA, CellFlow) on the same held-out doubles."""
    failed = [f"{p}: {run.get('status')}" for p, run in r.get("runs", {}).items() if run.get("status") != "ok"]
    lines = [
        "CPA / CellFlow on the same held-out doubles (model names carry version and training budget); "
        "bold = best. " + _provenance(r, link),
        "",
        *_metric_table(pd.DataFrame(r["summary"]), HEADLINE),
    ]
    if failed:
        lines += ["", "Not scored: " + "; ".join(failed) + "."]
    return lines


def cell_line_transfer(r: dict, link: str) -> list[str]:
    """SGK1 in U87MG from the other lines."""
    rows = pd.DataFrame(r["rows"]).rename(columns={"value": "mean"})
    held = r["held_out"]
    return [
        f"{held['condition'][0]} held out in {held['cell_type'][0]}, predicted from the other lines; bold = best. "
        + _provenance(r, link),
        "",
        *_metric_table(rows, HEADLINE),
    ]


def speed(r: dict, link: str) -> list[str]:
    """Sampling with the key/value cache, training throughput, options, sampling vs CFM."""
    lines = [
        "Sampling 1,000 cells (gpt-neox-small, D=50, P=4, N=16): key/value cache vs re-encoding every step. "
        + _provenance(r, link),
        "",
        "| K | cached (s) | re-encode (s) | speed-up | cached / teacher-forced forward | identical |",
        "|---|---|---|---|---|---|",
    ]
    for c in r["cache"]:
        lines.append(
            f"| {c['K']} | {c['cached_seconds']:.2f} | {c['reencode_seconds']:.2f} | "
            f"{c['speedup_cache_vs_reencode']:.1f}x | {c['cached_over_teacher_forced']:.2f} | "
            f"{c['identical_within_1e-4_relative']} |"
        )
    training, cfm = r["training"], r["cfm"]
    lines += [
        "",
        f"Training the default model: {training['fp32']['cells_per_second']:.0f} cells/s (fp32), "
        f"bf16-mixed {training['bf16_speedup']:.2f}x; bf16 sampling {r['bf16_sampling']['speedup']:.2f}x; "
        f"torch.compile of the loss {r['compile']['speedup']:.2f}x. Sampling vs CFM on {cfm['task']}: CaLMFlow "
        f"W2 {cfm['calmflow']['w2']:.3f} in {cfm['calmflow']['seconds_1000']:.3f} s per 1,000 samples; the "
        f"cheapest CFM setting at least as good ({cfm['matched']['solver']} {cfm['matched']['setting']}, W2 "
        f"{cfm['matched']['w2']:.3f}) takes {cfm['matched']['seconds_1000']:.4f} s.",
    ]
    return lines


def scale(r: dict, link: str) -> list[str]:
    """A backed file of a million cells: time and peak memory per phase."""
    lines = [
        f"{r['n_cells']:,} cells x {r['n_genes']:,} genes, backed .h5ad; peak RSS {r['peak_rss_gib']:.2f} GiB "
        f"(under 4 GiB: {r['target_met_under_4gib']}). " + _provenance(r, link),
        "",
        "| phase | seconds | peak RSS (GiB) |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {ph['seconds']:.0f} | {ph['peak_rss_gib']:.2f} |" for name, ph in r["phases"].items()]
    return lines


def metrics_speed(r: dict, link: str) -> list[str]:
    """Time of each tl distance on two sets of 10^4 cells."""
    lines = [
        f"{r['n_cells']:,} x {r['n_cells']:,} cells, best of {r['repeats']}. " + _provenance(r, link),
        "",
        "| dimensions | metric | seconds |",
        "|---|---|---|",
    ]
    lines += [f"| {row['dim']} | {row['metric']} | {row['seconds']:.2f} |" for row in r["rows"]]
    return lines


RENDERERS: dict[str, tuple[str, Callable[[dict, str], list[str]]]] = {
    "toy2d": ("Toy 2-D (CaLMFlow vs CFM, equal wall-clock)", toy2d),
    "toy2d_ablations": ("Toy 2-D ablations (K, P, N, beta, temperature)", toy2d_ablations),
    "highdim": ("High-dimensional Gaussian mixtures", highdim),
    "norman_combos": ("Unseen combinations (Norman 2019)", norman_combos),
    "peers_norman_combos": ("Peers on the unseen combinations", peers_norman_combos),
    "cell_line_transfer": ("Cell-line transfer", cell_line_transfer),
    "speed": ("Speed on CPU", speed),
    "scale": ("Scale: a million cells from disk", scale),
    "metrics_speed": ("Time of the distances", metrics_speed),
}


def assemble(results_dir: Path, link_prefix: str = "") -> str:
    """Markdown overview of the JSON results in ``results_dir``.

    Parameters
    ----------
    results_dir
        Folder with the benchmarks' ``*.json`` (and ``*.md``) files.
    link_prefix
        Prepended to the links (e.g. ``benchmarks/results/`` for a page at the repository root).

    Returns
    -------
    Markdown text.
    """
    files = sorted(results_dir.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"no *.json results in {results_dir}.")
    sections, others = [], []
    found = {}
    for path in files:
        try:
            r = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            others.append(f"- {path.name}: not valid JSON ({err})")
            continue
        name = r.get("benchmark") if isinstance(r, dict) else None
        link = link_prefix + (path.with_suffix(".md").name if path.with_suffix(".md").is_file() else path.name)
        if name in RENDERERS and path.stem == name:
            found[name] = (r, link)
        else:
            others.append(f"- [{link.rsplit('/', 1)[-1]}]({link}) ({name or 'unknown benchmark'})")
    for name, (title, render) in RENDERERS.items():
        if name in found:
            r, link = found[name]
            sections += [f"### {title}", "", *render(r, link), ""]
    lines = [
        "# Benchmark results at a glance",
        "",
        "Generated by `python benchmarks/assemble_results.py` from `benchmarks/results/*.json`; "
        "each table links to the full report (settings, machine, metric definitions).",
        "",
        *sections,
    ]
    if others:
        lines += ["### Other result files (explorations)", "", *others, ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    """Write ``README_table.md``; return its text.

    Parameters
    ----------
    argv
        Command-line arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    The Markdown written.
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=None, help="default: RESULTS/README_table.md")
    parser.add_argument("--link-prefix", default="", help="prefix of the links (benchmarks/results/ for README.md)")
    args = parser.parse_args(argv)
    text = assemble(args.results, args.link_prefix)
    out = args.out or args.results / "README_table.md"
    out.write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main(sys.argv[1:])
