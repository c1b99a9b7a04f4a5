"""GraphemeEncoder: vocabulary-free node embedding from a grapheme's UTF-8 bytes."""

from __future__ import annotations

import unicodedata
import warnings

import torch
from torch import Tensor, nn

from pyg_grapheme.data.graphemes import GRAPHEME_WIDTH, NUM_BYTE_CLASSES


def node_positions(num_nodes: int, batch: Tensor | None, ptr: Tensor | None = None) -> Tensor:
    """Reading-order position of every node inside its own graph (``long [N]``).

    Relies on the layout :func:`~pyg_grapheme.text_to_graph` produces and PyG keeps when
    batching: the nodes of a graph are stored contiguously in reading order. ``ptr``
    (``[B + 1]``, first node of each graph, :attr:`Batch.ptr
    <torch_geometric.data.Batch.ptr>`) spares the search for each graph's first node.
    """
    idx = torch.arange(num_nodes, device=batch.device if batch is not None else None)
    if batch is None or num_nodes == 0:
        return idx
    if ptr is not None:  # PyG's pointers: no size read from the data (no host sync)
        return idx - ptr.index_select(0, batch)
    # First node of each graph: the running minimum of idx over the graph's nodes.
    first = torch.full((int(batch.max()) + 1,), num_nodes, dtype=torch.long, device=idx.device)
    first = first.scatter_reduce(0, batch, idx, reduce="amin")
    return idx - first[batch]


#: Unicode major categories (first letter of the general category); 0 is "not decodable".
CATEGORIES = ("L", "M", "N", "P", "S", "Z", "C")
_CATEGORY_TABLE: Tensor | None = None


def _category_table() -> Tensor:
    """``uint8 [0x110000]``: the major category (1-7, :data:`CATEGORIES`) of every code
    point, built on first use (about half a second) and kept for the process."""
    global _CATEGORY_TABLE
    if _CATEGORY_TABLE is None:
        index = {c: i + 1 for i, c in enumerate(CATEGORIES)}
        _CATEGORY_TABLE = torch.tensor(
            [index[unicodedata.category(chr(c))[0]] for c in range(0x110000)],
            dtype=torch.uint8)
    return _CATEGORY_TABLE


def first_code_point(x: Tensor) -> Tensor:
    """The first code point of every grapheme (``long [N]``) from its byte slots ``[N, W]``
    (UTF-8 byte + 1, 0 = end); ``-1`` where the first bytes are no valid UTF-8 lead."""
    b = x[:, :4].long() - 1
    b = torch.cat([b, b.new_full((b.size(0), 4 - b.size(1)), -1)], 1) if b.size(1) < 4 else b
    c = (b & 0x3F).clamp(min=0)
    lead = b[:, 0]
    one = lead
    two = ((lead & 0x1F) << 6) | c[:, 1]
    three = ((lead & 0x0F) << 12) | (c[:, 1] << 6) | c[:, 2]
    four = ((lead & 0x07) << 18) | (c[:, 1] << 12) | (c[:, 2] << 6) | c[:, 3]
    cp = torch.where(lead < 0x80, one, torch.where(lead < 0xE0, two, torch.where(
        lead < 0xF0, three, four)))
    valid = (lead >= 0) & ((lead < 0x80) | ((lead >= 0xC0) & (lead < 0xF8)))
    return torch.where(valid & (cp < 0x110000), cp, torch.full_like(cp, -1))


def run_positions(category: Tensor, batch: Tensor | None) -> tuple[Tensor, Tensor]:
    r"""Each node's place inside its *run*, the maximal stretch of consecutive nodes of one
    graph with the same ``category`` (``long [N]``): ``(from_start, from_end)``, both
    ``long [N]`` and 0 at the run's ends.

    For a number, ``from_end`` is a digit's place value (0 = units): the digit-wise
    position of "Abacus" embeddings (McLeish et al., *Transformers Can Do Arithmetic with
    the Right Embeddings*, NeurIPS 2024), here for every run of one Unicode category, so
    words and numbers in any script get it. Nodes must be stored per graph in reading
    order (the layout of :func:`~pyg_grapheme.text_to_graph`).
    """
    n = category.numel()
    if n == 0:
        empty = category.new_zeros(0)
        return empty, empty
    same = category[1:] == category[:-1]
    if batch is not None:
        same = same & (batch[1:] == batch[:-1])
    new = torch.ones(n, dtype=torch.bool, device=category.device)  # first of its run
    new[1:] = ~same
    last = torch.ones(n, dtype=torch.bool, device=category.device)  # last of its run
    last[:-1] = ~same
    idx = torch.arange(n, device=category.device)
    # A running max of the run starts seen so far (and a running min of the ends, read
    # backwards): static shapes, where gathering the starts by a mask would not be.
    start = torch.where(new, idx, 0).cummax(0).values
    end = torch.where(last, idx, n - 1).flip(0).cummin(0).values.flip(0)
    return idx - start, end - idx


class GraphemeEncoder(nn.Module):
    r"""Embed graphemes from their bytes, with no vocabulary.

    Each node's ``x`` row holds :data:`GRAPHEME_WIDTH` byte slots (UTF-8 byte + 1, 0 = end;
    see :mod:`pyg_grapheme.data.graphemes`). A byte's embedding is that of the byte plus
    that of its slot, so a byte means something else in another slot; a grapheme is the
    sum over its bytes (the end marker adds nothing), plus its reading-order position:

    .. math::
        \mathbf{h}_i = \sum_{s:\, x_{i,s} \ne 0} \big(\mathbf{E}_{x_{i,s}} +
        \mathbf{S}_s\big) + \mathbf{P}_{\min(i,\, L - 1)}

    with :math:`i` the node's position in its graph and :math:`L` = ``max_positions``.
    Any grapheme, even one never seen in training, gets a vector composed from its bytes.
    All tables start at :math:`\mathcal N(0, 0.02^2)` and there is no normalisation here
    (the layers that follow normalise), as in GPT-2's embedding. On the place-value task
    (the digit at a named place of a number) the previous embedding (8 slot embeddings
    concatenated and projected, sinusoidal absolute and relative position codes,
    LayerNorm) left the model at chance, one answer for every question, and this one
    did not (the figures: docs/model.md).
    Positions past the table reuse its last row, with a warning.

    With ``run_positions > 0`` each node also gets two learned embeddings of its place in
    its run of same-category graphemes (:func:`run_positions`: from the run's end, from
    its start; clamped to ``run_positions - 1``): for a digit, its place value (units,
    tens, ...), the digit-wise positions that let Transformers add and compare numbers
    (McLeish et al., 2024). The category is that of the grapheme's first code point
    (Unicode major class), so it holds for any script.

    Args:
        hidden_channels: output size.
        max_positions: learned positions (default ``512``).
        run_positions: size of the run-position tables (default ``0``: none).

    Shapes:
        - **input:** ``x`` ``[N, GRAPHEME_WIDTH]`` (uint8 or long), ``batch`` ``[N]`` or ``None``
        - **output:** ``[N, hidden_channels]``
    """

    category_table: Tensor  # buffer of run_positions > 0 (see __init__)

    def __init__(self, hidden_channels: int, max_positions: int = 512,
                 run_positions: int = 0) -> None:
        super().__init__()
        if run_positions < 0:
            raise ValueError(f"run_positions must be >= 0, got {run_positions}")
        self.hidden_channels = hidden_channels
        self.max_positions = max_positions
        self.run_positions = run_positions
        self.byte_emb = nn.Embedding(NUM_BYTE_CLASSES, hidden_channels)
        self.slot_emb = nn.Parameter(torch.empty(GRAPHEME_WIDTH, hidden_channels))
        self.pos_emb = nn.Embedding(max_positions, hidden_channels)
        if run_positions:
            self.run_end_emb = nn.Embedding(run_positions, hidden_channels)
            self.run_start_emb = nn.Embedding(run_positions, hidden_channels)
            # A lookup table, not state: rebuilt from unicodedata, never saved; a copy per
            # module, so nothing done to one model's buffers reaches another's.
            self.register_buffer("category_table", _category_table().clone(), persistent=False)
        self._warned = False
        self.reset_parameters()

    def reset_parameters(self) -> None:
        weights = [self.byte_emb.weight, self.slot_emb, self.pos_emb.weight]
        if self.run_positions:
            weights += [self.run_end_emb.weight, self.run_start_emb.weight]
        with torch.no_grad():
            for weight in weights:
                weight.normal_(0.0, 0.02)

    def category(self, x: Tensor) -> Tensor:
        """Unicode major category (1-7, :data:`CATEGORIES`; 0 = undecodable) of every
        grapheme's first code point, ``long [N]`` (needs ``run_positions > 0``)."""
        cp = first_code_point(x)
        return torch.where(cp >= 0, self.category_table[cp.clamp(min=0)].long(),
                           torch.zeros_like(cp))

    def check_length(self, longest: int, stacklevel: int = 2) -> None:
        """Warn (once) if a text of ``longest`` graphemes runs past the position table:
        its later positions share the last learned one."""
        if longest > self.max_positions and not self._warned:
            warnings.warn(
                f"a text has more than max_positions={self.max_positions} graphemes: "
                "later positions share the last learned position", stacklevel=stacklevel)
            self._warned = True

    def forward(self, x: Tensor, batch: Tensor | None = None, ptr: Tensor | None = None
                ) -> Tensor:
        """With ``ptr`` (``[B + 1]``, PyG's pointers of ``batch``) the forward reads no
        value from the data (no host sync: it compiles without a graph break) and
        positions past the table are clamped without a word: the caller, who knows the
        longest text, warns with :meth:`check_length`
        (:class:`~pyg_grapheme.nn.GraphTransformNet` does)."""
        if x.dim() != 2 or x.size(1) != GRAPHEME_WIDTH:
            raise ValueError(
                f"GraphemeEncoder expects byte slots of shape [N, {GRAPHEME_WIDTH}], "
                f"got {tuple(x.shape)}"
            )
        x = x.long()
        present = (x != 0).to(self.slot_emb.dtype)  # the end marker adds nothing
        h = (self.byte_emb(x) * present.unsqueeze(-1)).sum(1) + present @ self.slot_emb
        pos = node_positions(x.size(0), batch, ptr)
        if ptr is not None:
            pos = pos.clamp(max=self.max_positions - 1)  # the identity inside the table
        elif pos.numel() and int(pos.max()) >= self.max_positions:
            self.check_length(int(pos.max()) + 1, stacklevel=3)
            pos = pos.clamp(max=self.max_positions - 1)
        h = h + self.pos_emb(pos)
        if self.run_positions:
            from_start, from_end = run_positions(self.category(x), batch)
            top = self.run_positions - 1
            h = h + self.run_end_emb(from_end.clamp(max=top)) + \
                self.run_start_emb(from_start.clamp(max=top))
        return h

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.hidden_channels}, "
            f"max_positions={self.max_positions}, run_positions={self.run_positions})"
        )
