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

__all__ = ["CaLMFlowModel", "__version__"]
