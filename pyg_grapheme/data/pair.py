"""Input/target graph pairs in one ``Data`` object (PyG's pair-data pattern)."""

from __future__ import annotations

import torch
from torch_geometric.data import Batch, Data

from pyg_grapheme.data.graphemes import text_to_graph

#: Graph attributes stored once per side, with suffix ``_s`` (input) and ``_t`` (target).
SIDE_KEYS = ("x", "edge_index", "edge_attr", "grapheme_len", "text_bytes")
#: ``follow_batch`` for :class:`torch_geometric.loader.DataLoader`: gives ``x_s_batch``
#: and ``x_t_batch``, the per-node graph assignment of each side.
FOLLOW_BATCH = ["x_s", "x_t"]


class PairData(Data):
    r"""An (input, target) pair of text graphs that batches both sides correctly.

    Attributes are those of :func:`~pyg_grapheme.text_to_graph` with suffix ``_s``
    (input) and ``_t`` (target): ``x_s, edge_index_s, grapheme_len_s, text_bytes_s`` and
    the same with ``_t``. ``edge_index_s`` is incremented by the number of input nodes
    and ``edge_index_t`` by the number of target nodes when batching.

    Example::

        loader = DataLoader(pairs, batch_size=32, follow_batch=FOLLOW_BATCH)
        inputs, targets = split_pair_batch(next(iter(loader)))
    """

    def __inc__(self, key: str, value, *args, **kwargs):
        if key == "edge_index_s":
            return self.x_s.size(0)
        if key == "edge_index_t":
            return self.x_t.size(0)
        return super().__inc__(key, value, *args, **kwargs)

    @property
    def num_nodes(self) -> int | None:
        # Nodes of both sides: keeps PyG from guessing (and warning) on a pair.
        if "x_s" in self and "x_t" in self:
            return self.x_s.size(0) + self.x_t.size(0)
        return super().num_nodes

    @num_nodes.setter
    def num_nodes(self, value):  # noqa: D401 - PyG's Data sets this attribute
        Data.num_nodes.fset(self, value)

    @classmethod
    def from_graphs(cls, source: Data, target: Data) -> PairData:
        """Pack two :func:`text_to_graph` graphs into one pair."""
        kwargs = {}
        for side, graph in (("s", source), ("t", target)):
            for key in SIDE_KEYS:
                if key in graph:
                    kwargs[f"{key}_{side}"] = graph[key]
        return cls(**kwargs)

    @classmethod
    def from_texts(cls, source: str, target: str, *, skip: tuple[int, ...] = ()) -> PairData:
        """The pair of graphs of two strings."""
        return cls.from_graphs(text_to_graph(source, skip=skip), text_to_graph(target, skip=skip))

    def side(self, which: str) -> Data:
        """The input (``"s"``) or target (``"t"``) graph of this pair as a plain ``Data``."""
        return Data(
            **{k: self[f"{k}_{which}"] for k in SIDE_KEYS if f"{k}_{which}" in self},
            num_nodes=self[f"x_{which}"].size(0),
        )


def split_pair_batch(batch: Batch) -> tuple[Batch, Batch]:
    """Split a collated batch of :class:`PairData` into an input and a target ``Batch``.

    Each returned batch has ``x, edge_index, batch, ptr`` (and the byte store), exactly as
    if the graphs of that side had been collated on their own, so layers and
    :func:`~pyg_grapheme.loss.structural_loss` take them directly. The loader must use
    ``follow_batch=FOLLOW_BATCH``.
    """
    num_graphs = batch.num_graphs
    out = []
    for side in ("s", "t"):
        vec = batch[f"x_{side}_batch"]
        counts = torch.bincount(vec, minlength=num_graphs)
        ptr = torch.zeros(num_graphs + 1, dtype=torch.long, device=vec.device)
        ptr[1:] = counts.cumsum(0)
        fields = {k: batch[f"{k}_{side}"] for k in SIDE_KEYS if f"{k}_{side}" in batch}
        graph = Batch(**fields, batch=vec, ptr=ptr)
        graph._num_graphs = num_graphs
        out.append(graph)
    return out[0], out[1]
