"""Peers measured side by side with CaLMFlow."""

from calmflow_sc.baselines.cfm import VelocityField, cfm_loss, cfm_sample

__all__ = ["VelocityField", "cfm_loss", "cfm_sample"]
