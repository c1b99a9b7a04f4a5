"""Re-exports only: the pool now lives in :mod:`pyg_grapheme.nn.pool` (select, quotient,
estimators, merge_pool). This module keeps the names importable from where they were;
new code should import from :mod:`pyg_grapheme.nn` or :mod:`pyg_grapheme.nn.pool`."""

from pyg_grapheme.nn.pool.estimators import ESTIMATOR, score_function_loss
from pyg_grapheme.nn.pool.merge_pool import (
    EDGE_REDUCE,
    REDUCE,
    PoolOutput,
    ThresholdMergePool,
    UnpoolInfo,
)
from pyg_grapheme.nn.pool.quotient import coarsen_edges
from pyg_grapheme.nn.pool.select import (
    SCORE_NORM,
    SIMILARITY,
    edge_similarity,
    forced_merges,
    merge_logit,
    standardize_per_graph,
)

__all__ = [
    "EDGE_REDUCE",
    "ESTIMATOR",
    "REDUCE",
    "SCORE_NORM",
    "SIMILARITY",
    "PoolOutput",
    "ThresholdMergePool",
    "UnpoolInfo",
    "coarsen_edges",
    "edge_similarity",
    "forced_merges",
    "merge_logit",
    "score_function_loss",
    "standardize_per_graph",
]
