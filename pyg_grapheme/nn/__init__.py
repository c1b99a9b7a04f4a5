"""pyg_grapheme.nn"""

from pyg_grapheme.nn.components import connected_components
from pyg_grapheme.nn.merge_pool import PoolOutput, ThresholdMergePool

__all__ = [
    "connected_components",
    "PoolOutput",
    "ThresholdMergePool",
]
