"""PyG transforms that turn text records into graphs."""

from __future__ import annotations

from torch_geometric.data import Data
from torch_geometric.transforms import BaseTransform

from pyg_grapheme.data.pair import PairData


class TextToGraph(BaseTransform):
    r"""Replace a record's ``input`` and ``target`` strings by their grapheme graphs.

    Takes a ``Data`` (or anything indexable) with string attributes ``input`` and
    ``target`` and returns a :class:`~pyg_grapheme.data.PairData`; a record with only
    ``text`` becomes the single graph :func:`~pyg_grapheme.text_to_graph` gives.

    Args:
        skip: extra edge distances passed to :func:`~pyg_grapheme.text_to_graph`.
    """

    def __init__(self, skip: tuple[int, ...] = ()) -> None:
        self.skip = tuple(skip)

    def forward(self, data: Data) -> Data:
        from pyg_grapheme.data.graphemes import text_to_graph

        if "input" in data and "target" in data:
            return PairData.from_texts(data.input, data.target, skip=self.skip)
        if "text" in data:
            return text_to_graph(data.text, skip=self.skip)
        raise ValueError("TextToGraph needs a record with 'input' and 'target', or 'text'")

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(skip={self.skip})"
