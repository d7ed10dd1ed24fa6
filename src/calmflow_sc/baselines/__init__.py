"""Peers measured side by side with CaLMFlow."""

from calmflow_sc.baselines._cfm_model import CFMBaseline
from calmflow_sc.baselines._simple import additive_baseline, control_baseline, mean_baseline
from calmflow_sc.baselines.cfm import VelocityField, cfm_loss, cfm_sample

__all__ = [
    "CFMBaseline",
    "VelocityField",
    "additive_baseline",
    "cfm_loss",
    "cfm_sample",
    "control_baseline",
    "mean_baseline",
]
