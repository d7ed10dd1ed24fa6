"""Synthetic tasks and loaders."""

from calmflow_sc.datasets.toy import TOY_2D, eight_gaussians, standard_normal, two_moons

__all__ = ["TOY_2D", "eight_gaussians", "standard_normal", "two_moons"]
