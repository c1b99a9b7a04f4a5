"""pyg_grapheme.nn"""

from pyg_grapheme.nn.components import connected_components

__all__ = [
    "connected_components",
]
