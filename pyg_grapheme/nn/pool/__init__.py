r"""Learnable-threshold quotient-graph pooling, split as PyG splits pooling:

* :mod:`.select`: which nodes merge (edge scores, the threshold, forced cuts);
* :mod:`.quotient`: how edges are kept (components, cluster ids, coarsened edges);
* :mod:`.estimators`: the threshold's gradient (expected counts, score function);
* :mod:`.merge_pool`: :class:`ThresholdMergePool`, which composes them and reduces the
  features with a PyG aggregation, :class:`PoolOutput`, :class:`UnpoolInfo`; its steps
  ``select -> connect -> coarsen`` pass :class:`Selection` and :class:`Partition`.
"""

from pyg_grapheme.nn.pool.estimators import score_function_loss
from pyg_grapheme.nn.pool.merge_pool import (
    Partition,
    PoolOutput,
    Selection,
    ThresholdMergePool,
    UnpoolInfo,
)
from pyg_grapheme.nn.pool.quotient import Quotient, coarsen_edges, quotient
from pyg_grapheme.nn.pool.select import (
    edge_similarity,
    forced_merges,
    merge_logit,
    standardize_per_graph,
)

__all__ = [
    "Partition",
    "PoolOutput",
    "Quotient",
    "Selection",
    "ThresholdMergePool",
    "UnpoolInfo",
    "coarsen_edges",
    "edge_similarity",
    "forced_merges",
    "merge_logit",
    "quotient",
    "score_function_loss",
    "standardize_per_graph",
]
