"""pyg_grapheme.loss: the structural graph-to-graph loss and its batched Sinkhorn solver."""

from pyg_grapheme.loss.sinkhorn import SinkhornOutput, sinkhorn

__all__ = ["sinkhorn", "SinkhornOutput"]
