"""calmflow-sc: CaLMFlow for single-cell perturbation prediction.

Flow matching recast as a Volterra integral equation and solved by a causal language model
over space-time tokens of a cell's trajectory, conditioned on text.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("calmflow-sc")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

from calmflow_sc.model import CaLMFlowModel

__all__ = ["CaLMFlowModel", "__version__", "pl", "tl"]
_LAZY_SUBMODULES = ("pl", "tl")


def __getattr__(name: str):
    """Import ``calmflow_sc.pl`` / ``calmflow_sc.tl`` on first use (``cf.pl.embedding``), keeping import cheap."""
    if name in _LAZY_SUBMODULES:
        import importlib

        module = importlib.import_module(f"calmflow_sc.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'calmflow_sc' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY_SUBMODULES})
