"""pyg_grapheme.loss: the structural graph-to-graph loss (batched Sinkhorn and fused-GW
solvers) and the exact segmentation likelihood of chains.

One idea a module: ``inputs`` (reading the two batches), ``costs`` (node costs and the
dummy layout), ``quadratic`` (the edge term), ``sinkhorn``, ``fgw`` (the functional
solver), ``clique``, ``structural`` (composes them), ``segmentation``.
"""

from pyg_grapheme.loss.clique import clique_loss, clique_statistics
from pyg_grapheme.loss.costs import node_cost_matrix
from pyg_grapheme.loss.fgw import FGWResult, fgw
from pyg_grapheme.loss.segmentation import segmentation_log_likelihood, segmentation_nll
from pyg_grapheme.loss.sinkhorn import SinkhornOutput, sinkhorn
from pyg_grapheme.loss.structural import StructuralLoss, structural_loss

__all__ = [
    "structural_loss",
    "StructuralLoss",
    "sinkhorn",
    "SinkhornOutput",
    "clique_loss",
    "clique_statistics",
    "node_cost_matrix",
    "segmentation_log_likelihood",
    "segmentation_nll",
    "fgw",
    "FGWResult",
]
