"""Plotting in scanpy's conventions: data first, keyword-only options, ``ax``, ``show``, ``return_fig``."""

from calmflow_sc.pl._embedding import embedding
from calmflow_sc.pl._history import history
from calmflow_sc.pl._mean_expression import mean_expression
from calmflow_sc.pl._metrics import metrics
from calmflow_sc.pl._response import response_genes
from calmflow_sc.pl._trajectories import trajectories

__all__ = ["embedding", "history", "mean_expression", "metrics", "response_genes", "trajectories"]
