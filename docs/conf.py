"""Sphinx configuration for calmflow-sc (``make docs``; warnings are errors)."""

from __future__ import annotations

import os
import shutil
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # the source tree, also when the package is not installed
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

project = "calmflow-sc"
author = "calmflow-sc developers"
copyright = "2026, calmflow-sc developers"
try:
    release = version("calmflow-sc")
except PackageNotFoundError:  # pragma: no cover - building from a bare source tree
    release = "0.0.0+unknown"
version = release

extensions = [
    "myst_nb",  # Markdown (MyST) pages and the executed tutorial notebooks
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",  # the package's numpydoc docstrings
    "sphinx.ext.viewcode",
    "sphinx.ext.mathjax",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]
templates_path = ["_templates"]

# --- Tutorials ----------------------------------------------------------------------------------
# The notebooks live in the repository's tutorials/ folder; Sphinx only reads files under docs/,
# so they are copied into docs/tutorials/ (git-ignored) on every build, stale copies removed.
TUTORIALS_SRC, TUTORIALS_DST = ROOT / "tutorials", Path(__file__).resolve().parent / "tutorials"


def _copy_tutorials() -> None:
    TUTORIALS_DST.mkdir(exist_ok=True)
    wanted = {p.name: p for p in TUTORIALS_SRC.glob("*.ipynb")}
    for old in TUTORIALS_DST.glob("*.ipynb"):
        if old.name not in wanted:
            old.unlink()
    for name, src in wanted.items():
        dst = TUTORIALS_DST / name
        if not dst.exists() or dst.read_bytes() != src.read_bytes():  # unchanged copies keep incremental builds
            shutil.copyfile(src, dst)


_copy_tutorials()

# --- MyST / myst-nb ----------------------------------------------------------------------------
myst_enable_extensions = ["colon_fence", "dollarmath", "deflist"]
myst_heading_anchors = 3
# Notebooks are committed with their outputs (executed with full settings); the docs build never
# runs them. tests/test_tutorials.py executes them with small settings.
nb_execution_mode = "off"
nb_merge_streams = True

# --- API reference -----------------------------------------------------------------------------
autosummary_generate = True
autosummary_imported_members = True
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
# Only members defined in calmflow-sc are documented (no :inherited-members:). CaLMFlowModel
# derives from scvi-tools' BaseModelClass, whose inherited methods carry scvi-tools' own
# docstrings (with cross-references into scvi-tools' docs); they are documented there, and
# pulling them in here would make this build depend on another project's docstring markup.
autodoc_default_options = {"show-inheritance": True}
autodoc_mock_imports: list[str] = []

napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False  # "Returns" prose stays a paragraph instead of a return-type field
napoleon_use_param = True
napoleon_use_ivar = True
napoleon_preprocess_types = False

# --- HTML --------------------------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = f"calmflow-sc {release}"
html_static_path = ["_static"]
html_theme_options = {
    "repository_url": "https://github.com/calmflow-sc/calmflow-sc",
    "use_repository_button": True,
    "path_to_docs": "docs",
    "show_toc_level": 2,
}

# --- Benchmark results -------------------------------------------------------------------------
RESULTS = ROOT / "benchmarks" / "results"
RESULTS_FIRST = ["toy2d.md", "norman_combos.md", "norman_combos_explorations.md"]
RESULTS_MARKER = "<!-- benchmark-results -->"
#: Overviews for browsing the repository (links relative to the results folder); the page has every report.
RESULTS_SKIP = {"README_table.md"}


def _benchmark_includes() -> str:
    """MyST include directives for every committed ``benchmarks/results/*.md``, headline files first.

    Each file's own title becomes a section heading (with the file name where titles repeat, as
    for the exploration runs) and the rest of the file is included one heading level down.
    """
    names = sorted(p.name for p in RESULTS.glob("*.md") if p.name not in RESULTS_SKIP)
    ordered = [n for n in RESULTS_FIRST if n in names] + [n for n in names if n not in RESULTS_FIRST]
    titles = {}
    for name in ordered:
        first = (RESULTS / name).read_text().split("\n", 1)[0]
        titles[name] = first[2:].strip() if first.startswith("# ") else None
    repeated = {t for t in titles.values() if t and list(titles.values()).count(t) > 1}
    blocks = []
    for name in ordered:
        title = titles[name]
        if title is None:
            heading, skip = f"`{name}`", ""
        else:
            heading, skip = (f"{title} (`{name}`)" if title in repeated else title), ":start-line: 1\n"
        blocks.append(
            f"## {heading}\n\n```{{include}} ../benchmarks/results/{name}\n{skip}:heading-offset: 1\n```\n\n"
            f"<sub>File: `benchmarks/results/{name}`</sub>\n"
        )
    return "\n".join(blocks)


def _insert_benchmark_results(app, docname: str, source: list[str]) -> None:
    """Expand the marker of ``benchmarks.md`` so new result files appear without editing the page."""
    if docname == "benchmarks":
        source[0] = source[0].replace(RESULTS_MARKER, _benchmark_includes())


def _data_docstring_from_defining_module(app, what, name, obj, options, lines) -> None:
    """Give re-exported constants (``tl.METRICS``) the ``#:`` comment of the module defining them.

    autodoc looks for ``#:`` comments in the module it documents from (the package's
    ``__init__``), finds none there and falls back to the docstring of ``dict``.
    """
    if what != "data" or not name.startswith("calmflow_sc.") or getattr(obj, "__doc__", None) != type(obj).__doc__:
        return
    from sphinx.pycode import ModuleAnalyzer

    attr = name.rsplit(".", 1)[-1]
    for module_name, module in sorted(sys.modules.items()):
        if not module_name.startswith("calmflow_sc.") or getattr(module, attr, None) is not obj:
            continue
        try:
            docs = ModuleAnalyzer.for_module(module_name).find_attr_docs()
        except Exception:
            continue
        if ("", attr) in docs:
            lines[:] = list(docs[("", attr)])
            return
    lines[:] = []


def setup(app) -> dict:
    """Register the hooks and rebuild the benchmarks page when a result file changes."""
    app.connect("source-read", _insert_benchmark_results)
    app.connect("autodoc-process-docstring", _data_docstring_from_defining_module, priority=600)  # after napoleon
    # a changed, added or removed result file changes this value, which makes Sphinx re-read the pages
    stamps = tuple(sorted((p.name, p.stat().st_mtime_ns) for p in RESULTS.glob("*.md")))
    app.add_config_value("calmflow_benchmark_results", stamps, "env")
    return {"parallel_read_safe": True}
