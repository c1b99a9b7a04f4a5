"""ByteHead: per-node distributions over the bytes of a grapheme; target encoding; decoding."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Batch, Data

from pyg_grapheme.data.graphemes import GRAPHEME_WIDTH, NUM_BYTE_CLASSES, decode_slots

__all__ = ["ByteHead", "decode_slots", "one_hot_bytes"]


class ByteHead(nn.Module):
    r"""Predict each node's grapheme as one distribution over byte classes per slot.

    .. math::
        \mathbf{p}_{i,k} = \mathrm{softmax}\big(\mathbf{W}_2\, \mathrm{GELU}(\mathbf{W}_1
        \mathbf{h}_i)\big)_{k} \in \Delta^{255}, \qquad k = 1, \dots, W

    Class 0 of a slot means "the grapheme has ended" (:data:`PAD`), class ``b + 1`` the
    UTF-8 byte ``b`` (the encoding of :func:`~pyg_grapheme.text_to_graph`), so predictions
    are vocabulary-free and compare directly with :func:`one_hot_bytes` targets.

    ``factorized=True`` shares one 256-way output layer over the slots and tells them
    apart by a learned slot embedding :math:`\mathbf{s}_k` added before the
    nonlinearity, plus a per-slot output bias :math:`\mathbf{b}_k`:

    .. math::
        \mathbf{p}_{i,k} = \mathrm{softmax}\big(\mathbf{W}_2\, \mathrm{GELU}(\mathbf{W}_1
        \mathbf{h}_i + \mathbf{s}_k) + \mathbf{b}_k\big)

    The same FLOPs, but :math:`256 (h + W + 1) + W h` output parameters instead of
    :math:`256 W (h + 1)` (at ``h = 128``: 36k instead of 264k, a fifth of
    :class:`~pyg_grapheme.nn.GraphTransformNet`'s default count), which a model can
    spend on depth.

    Args:
        in_channels: input feature size.
        hidden_channels: the hidden layer's size (default ``in_channels``).
        factorized: one output layer shared by the slots (see above; default ``False``).

    Shapes:
        - **input:** ``[N, in_channels]``
        - **output:** logits ``[N, GRAPHEME_WIDTH, 256]`` (``forward``); use
          ``logits.softmax(-1)`` for the distributions.
    """

    def __init__(self, in_channels: int, hidden_channels: int | None = None,
                 factorized: bool = False) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.factorized = factorized
        hidden = hidden_channels or in_channels
        self.lin1 = nn.Linear(in_channels, hidden)
        if factorized:
            self.slot = nn.Parameter(torch.empty(GRAPHEME_WIDTH, hidden))
            self.lin2 = nn.Linear(hidden, NUM_BYTE_CLASSES)
            self.slot_bias = nn.Parameter(torch.empty(GRAPHEME_WIDTH, NUM_BYTE_CLASSES))
        else:
            self.register_parameter("slot", None)
            self.lin2 = nn.Linear(hidden, GRAPHEME_WIDTH * NUM_BYTE_CLASSES)
            self.register_parameter("slot_bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.lin1.reset_parameters()
        self.lin2.reset_parameters()
        if self.slot is not None:
            # Slot embeddings at the scale of lin1's outputs, so that slots differ from
            # the first step; the per-slot bias starts at zero (lin2 has its own).
            nn.init.normal_(self.slot, std=0.5)
            nn.init.zeros_(self.slot_bias)

    @torch.no_grad()
    def init_output_prior(self, target: Tensor, smoothing: float = 0.1) -> None:
        r"""Set the output bias to the log of each slot's byte frequencies in ``target``
        (``[M, GRAPHEME_WIDTH]`` byte classes, e.g. every training answer's ``x``), with
        ``smoothing`` added to every count.

        A model whose head already predicts the answers' marginal at step 0 need not
        learn it by making every question's features alike: on the kindergarten set,
        without it the head's inputs for different questions collapsed to one direction
        for tens of steps (one answer for every question), with it the model told the
        questions apart far sooner (docs/model.md; the "init well" advice of setting the
        last layer's bias to the data prior). It can also hold a model
        where it starts: at the marginal the gradients of the shared weights average out
        over the questions, and place value stayed at chance with it (docs/model.md), so
        :class:`~pyg_grapheme.training.GraphemeModule` leaves it off by default.
        """
        # A bincount per slot: O(M * slots) memory (a one-hot of 800k answer graphemes
        # was 13 GB of int64).
        slots = target.size(-1)
        offset = torch.arange(slots, device=target.device) * NUM_BYTE_CLASSES
        counts = torch.bincount((target.long() + offset).reshape(-1),
                                minlength=slots * NUM_BYTE_CLASSES)
        counts = counts.view(slots, NUM_BYTE_CLASSES).to(self.lin2.bias.dtype) + smoothing
        prior = (counts / counts.sum(-1, keepdim=True)).log()
        if self.factorized:  # the per-slot bias carries the prior, the shared one nothing
            self.slot_bias.copy_(prior)
            self.lin2.bias.zero_()
        else:
            self.lin2.bias.copy_(prior.view(-1))

    def forward(self, h: Tensor) -> Tensor:
        if self.factorized:
            u = F.gelu(self.lin1(h).unsqueeze(1) + self.slot)  # [N, W, hidden]
            return self.lin2(u) + self.slot_bias
        out = self.lin2(F.gelu(self.lin1(h)))
        return out.view(-1, GRAPHEME_WIDTH, NUM_BYTE_CLASSES)

    def __repr__(self) -> str:
        extra = ", factorized=True" if self.factorized else ""
        return f"{self.__class__.__name__}({self.in_channels}, slots={GRAPHEME_WIDTH}{extra})"


def one_hot_bytes(batch: Data | Batch) -> Data | Batch:
    """The same graph(s) with ``x`` as one-hot byte distributions ``[N, GRAPHEME_WIDTH, 256]``.

    ``structural_loss(model(inputs), one_hot_bytes(targets))`` compares a predicted graph
    with a text graph in the same space. Other attributes are shared, not copied.
    """
    out = copy.copy(batch)  # PyG copies the stores, not the tensors
    out.x = F.one_hot(batch.x.long(), NUM_BYTE_CLASSES).float()
    return out

