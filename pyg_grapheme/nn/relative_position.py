"""RelativePositionBias: T5's learned attention bias per head and bucketed node distance."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def relative_buckets(distance: Tensor, num_buckets: int, max_distance: int) -> Tensor:
    r"""T5's bidirectional bucket of each signed distance ``j - i`` (key minus query):
    half the buckets per sign, the first half of those exact (distances ``0 ..
    num_buckets // 4 - 1``), the rest log-spaced up to ``max_distance``, beyond which
    distances share the last bucket (Raffel et al., 2020; the function of their code,
    ``_relative_position_bucket`` with ``bidirectional=True``). Returns a tensor of the
    same shape with values in ``[0, num_buckets)``."""
    half = num_buckets // 2
    out = (distance > 0).long() * half
    n = distance.abs()
    exact = half // 2
    # log-spaced above `exact`: clamp first so that log(0) is never taken
    scaled = torch.log(n.clamp(min=exact).float() / exact) / math.log(max_distance / exact)
    large = exact + (scaled * (half - exact)).long()
    large = large.clamp(max=half - 1)
    return out + torch.where(n < exact, n, large)


class RelativePositionBias(nn.Module):
    r"""A learned scalar per attention head and per relative position, added to the
    attention logits (T5's relative position bias, Raffel et al., *Exploring the Limits
    of Transfer Learning with a Unified Text-to-Text Transformer*, JMLR 2020, section 2.1):

    .. math::
        \alpha_{ij}^{(h)} = \operatorname{softmax}_j\Big(
            \frac{\mathbf{q}_i^{(h)\top} \mathbf{k}_j^{(h)}}{\sqrt{d}}
            + b^{(h)}_{\beta(j - i)}\Big)

    where :math:`j - i` is the signed distance between key and query in the order of a
    graph's nodes (reading order for text graphs, PyG's dense batch of
    :func:`~torch_geometric.utils.to_dense_batch` keeps it) and :math:`\beta` buckets it
    (:func:`relative_buckets`: exact near 0, log-spaced to ``max_distance``, shared
    beyond). Absolute position codes tie what a layer learnt about ``7`` two places
    before ``*`` to where in the question the pair happens to sit; the bias lets
    attention find an operand by its distance wherever it sits. The table starts at 0
    (``init="zeros"``: a layer with the bias computes what it computed without it until
    training moves it) or at ALiBi's penalties (``init="alibi"``, Press et al., *Train
    Short, Test Long*, ICLR 2022: :math:`-m_h |j - i|` at each bucket's nearest distance,
    slopes :math:`m_h = 2^{-8h/H}`: from the start each head looks nearer or farther).

    Args:
        heads: attention heads. num_buckets: distances told apart (default ``32``, T5's).
        max_distance: the last log-spaced bucket's distance (default ``128``, T5's).
        init: ``"alibi"`` (default) or ``"zeros"``, the table's initial values (from zeros
            the table was learnt too slowly to matter within a few thousand steps, on
            math2; docs/model.md).

    Shapes:
        - **output** of ``forward(length, batch_size)``: ``[batch_size * heads, length,
          length]``, the float ``attn_mask`` of :class:`torch.nn.MultiheadAttention`
          (batch-major), with ``key_padding_mask`` (``[batch_size, length]``, ``True`` =
          padding) folded in as ``-inf``.
    """

    def __init__(self, heads: int, num_buckets: int = 32, max_distance: int = 128,
                 init: str = "alibi") -> None:
        super().__init__()
        if init not in ("zeros", "alibi"):
            raise ValueError(f"init must be 'zeros' or 'alibi', got {init!r}")
        self.init = init
        if num_buckets < 4 or num_buckets % 4:
            raise ValueError(f"num_buckets must be a positive multiple of 4, got {num_buckets}")
        if max_distance <= num_buckets // 4:
            raise ValueError(f"max_distance ({max_distance}) must exceed num_buckets // 4 "
                             f"({num_buckets // 4})")
        self.heads, self.num_buckets, self.max_distance = heads, num_buckets, max_distance
        self.bias = nn.Embedding(num_buckets, heads)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.init == "zeros":
            nn.init.zeros_(self.bias.weight)
            return
        # ALiBi's penalty -m_h |d|, slopes m_h = 2^(-8 h / H), h = 1..H (Press et al.,
        # 2022), at each bucket's nearest distance
        d = torch.arange(-self.max_distance, self.max_distance + 1)
        bucket = relative_buckets(d, self.num_buckets, self.max_distance)
        nearest = torch.zeros(self.num_buckets, dtype=torch.long)  # 0 where none falls
        nearest = nearest.scatter_reduce(0, bucket, d.abs(), reduce="amin", include_self=False)
        slopes = 2.0 ** (-8.0 * torch.arange(1, self.heads + 1) / self.heads)
        with torch.no_grad():
            self.bias.weight.copy_(-nearest.unsqueeze(1).float() * slopes)

    def forward(self, length: int, batch_size: int, key_padding_mask: Tensor | None = None,
                dtype: torch.dtype | None = None) -> Tensor:
        device = self.bias.weight.device
        pos = torch.arange(length, device=device)
        bucket = relative_buckets(pos.view(1, -1) - pos.view(-1, 1), self.num_buckets,
                                  self.max_distance)
        bias = self.bias(bucket).permute(2, 0, 1)  # [heads, L, L]
        if dtype is not None:
            bias = bias.to(dtype)
        bias = bias.unsqueeze(0).expand(batch_size, -1, -1, -1)
        if key_padding_mask is not None:
            bias = bias.masked_fill(key_padding_mask.view(batch_size, 1, 1, length),
                                    float("-inf"))
        return bias.reshape(batch_size * self.heads, length, length)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(heads={self.heads}, num_buckets={self.num_buckets}"
                f", max_distance={self.max_distance}, init={self.init!r})")
