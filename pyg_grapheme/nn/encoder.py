"""GraphemeEncoder: vocabulary-free node embedding from a grapheme's UTF-8 bytes."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from pyg_grapheme.data.graphemes import GRAPHEME_WIDTH, NUM_BYTE_CLASSES


def node_positions(num_nodes: int, batch: Tensor | None, ptr: Tensor | None = None) -> Tensor:
    """Reading-order position of every node inside its own graph (``long [N]``).

    Relies on the layout :func:`~pyg_grapheme.text_to_graph` produces and PyG keeps when
    batching: the nodes of a graph are stored contiguously in reading order.
    """
    idx = torch.arange(num_nodes, device=batch.device if batch is not None else None)
    if batch is None or num_nodes == 0:
        return idx
    # First node of each graph: the running minimum of idx over the graph's nodes.
    first = torch.full((int(batch.max()) + 1,), num_nodes, dtype=torch.long, device=idx.device)
    first = first.scatter_reduce(0, batch, idx, reduce="amin")
    return idx - first[batch]


def sinusoid(pos: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal code of (possibly fractional) positions, ``[N] -> [N, dim]``."""
    half = dim // 2
    freq = torch.exp(
        -math.log(max_period) * torch.arange(half, device=pos.device, dtype=torch.float) / half
    )
    angle = pos.float()[:, None] * freq[None, :]
    return torch.cat([angle.sin(), angle.cos()], dim=-1)


class ChainPosition(nn.Module):
    r"""Learned projection of each node's absolute and relative reading-order position,
    :math:`\mathbf{P}\,[\mathrm{sin}(i) \,\|\, \mathrm{sin}(64\, i / n_{g(i)})]`
    (``[N] -> [N, channels]``; see :func:`node_positions` for the layout it assumes)."""

    def __init__(self, channels: int, pos_dim: int = 32) -> None:
        super().__init__()
        self.pos_dim = pos_dim
        self.lin = nn.Linear(2 * pos_dim, channels)

    def reset_parameters(self) -> None:
        self.lin.reset_parameters()

    def forward(self, batch: Tensor | None, num_nodes: int) -> Tensor:
        n = num_nodes
        pos = node_positions(n, batch)
        if batch is None:
            size = torch.full_like(pos, max(n, 1))
        else:
            size = torch.bincount(batch, minlength=int(batch.max()) + 1 if n else 0)[batch]
        rel = 64.0 * pos.float() / size.clamp_min(1).float()
        code = torch.cat([sinusoid(pos, self.pos_dim), sinusoid(rel, self.pos_dim)], dim=-1)
        return self.lin(code.to(self.lin.weight.dtype))


class GraphemeEncoder(nn.Module):
    r"""Embed graphemes from their bytes, with no vocabulary.

    Each node's ``x`` row holds :data:`GRAPHEME_WIDTH` byte slots (UTF-8 byte + 1, 0 = end;
    see :mod:`pyg_grapheme.data.graphemes`). The embedding concatenates one learned byte
    embedding per slot, so a byte's meaning depends on its slot, and projects it:

    .. math::
        \mathbf{h}_i = \mathrm{LN}\Big(\mathbf{W}\,[\mathbf{E}_{x_{i,1}} \,\|\, \dots \,\|\,
        \mathbf{E}_{x_{i,W}}] + \mathbf{P}\,[\mathrm{sin}(i) \,\|\, \mathrm{sin}(r_i)]\Big),
        \qquad r_i = 64\, i / n_{g(i)}

    where :math:`i` is the node's reading-order position in its graph and :math:`n_g` the
    graph's node count: absolute and relative position along the chain. Any grapheme, even
    one never seen in training, gets a vector composed from its bytes.

    Args:
        hidden_channels: output size.
        byte_dim: size of each slot's byte embedding (default ``32``).
        pos_dim: size of each sinusoidal position code (default ``32``).

    Shapes:
        - **input:** ``x`` ``[N, GRAPHEME_WIDTH]`` (uint8 or long), ``batch`` ``[N]`` or ``None``
        - **output:** ``[N, hidden_channels]``
    """

    def __init__(self, hidden_channels: int, byte_dim: int = 32, pos_dim: int = 32) -> None:
        super().__init__()
        self.hidden_channels = hidden_channels
        self.byte_dim = byte_dim
        self.pos_dim = pos_dim
        self.byte_emb = nn.Embedding(NUM_BYTE_CLASSES, byte_dim)
        self.byte_proj = nn.Linear(GRAPHEME_WIDTH * byte_dim, hidden_channels)
        self.pos = ChainPosition(hidden_channels, pos_dim)
        self.norm = nn.LayerNorm(hidden_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.byte_emb.reset_parameters()
        self.byte_proj.reset_parameters()
        self.pos.reset_parameters()
        self.norm.reset_parameters()

    def forward(self, x: Tensor, batch: Tensor | None = None) -> Tensor:
        if x.dim() != 2 or x.size(1) != GRAPHEME_WIDTH:
            raise ValueError(
                f"GraphemeEncoder expects byte slots of shape [N, {GRAPHEME_WIDTH}], "
                f"got {tuple(x.shape)}"
            )
        n = x.size(0)
        h = self.byte_proj(self.byte_emb(x.long()).reshape(n, GRAPHEME_WIDTH * self.byte_dim))
        return self.norm(h + self.pos(batch, n))

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.hidden_channels}, byte_dim={self.byte_dim}, "
            f"pos_dim={self.pos_dim})"
        )
