"""Tools: distances between cell sets, mean-expression agreement, evaluation tables and joint embeddings."""

from calmflow_sc.tl._distances import energy_distance, median_distance, mmd, wasserstein
from calmflow_sc.tl._embed import embed_joint
from calmflow_sc.tl._evaluate import METRICS, evaluate, summarize
from calmflow_sc.tl._expression import mean_expression, r2_mean, top_degs

__all__ = [
    "METRICS",
    "embed_joint",
    "energy_distance",
    "evaluate",
    "mean_expression",
    "median_distance",
    "mmd",
    "r2_mean",
    "summarize",
    "top_degs",
    "wasserstein",
]
