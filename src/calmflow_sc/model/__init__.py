"""The scvi-tools-style user object."""

from calmflow_sc.model._model import CaLMFlowModel
from calmflow_sc.model._training_plan import CaLMFlowTrainingPlan

__all__ = ["CaLMFlowModel", "CaLMFlowTrainingPlan"]
