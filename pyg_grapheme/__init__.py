"""pyg_grapheme: vocabulary-free graph-to-graph learning on text with PyTorch Geometric."""

from pyg_grapheme.data.graphemes import graph_to_text, text_to_graph

__version__ = "0.1.0"

__all__ = ["text_to_graph", "graph_to_text", "__version__"]
