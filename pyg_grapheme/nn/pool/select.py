r"""Which nodes merge: edge scores, the learnt threshold and forced cuts (the *select*
step of PyG's select -> connect -> reduce split of pooling).

Every function here is O(E) (or O(E log E) for :func:`forced_merges`), keeps static
shapes and makes no host sync, so it traces under :mod:`torch.compile` without a break.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.utils import cumsum, scatter

SIMILARITY = ("cosine", "half_cosine")
SCORE_NORM = ("graph", "none")

#: Edges per chunk in the cosine kernels: keeps each [chunk, F] temporary near 4 MiB so
#: the allocator reuses it instead of mapping (and page-faulting) fresh memory on graphs
#: with millions of edges.
_CHUNK_ELEMENTS = 1 << 20


def _chunks(num_edges: int, num_features: int) -> list[tuple[int, int]]:
    step = max(1, _CHUNK_ELEMENTS // max(num_features, 1))
    return [(i, min(i + step, num_edges)) for i in range(0, num_edges, step)]


class _EdgeCosine(torch.autograd.Function):
    """Cosine of the end nodes of every edge with a hand-written, chunked backward:
    autograd's backward of ``x[row]`` (index_put with accumulate) was the slowest step
    on CPU, and [E, F] temporaries dominated the time on large graphs."""

    @staticmethod
    def forward(ctx, x: Tensor, row: Tensor, col: Tensor) -> Tensor:
        norm = x.norm(dim=-1)
        # A zero vector gets inverse norm 0: cosine 0 and gradient 0, never NaN.
        inv = torch.where(norm > 1e-12, norm.clamp_min(1e-12).reciprocal(), 0.0)
        inv_prod = inv.index_select(0, row) * inv.index_select(0, col)
        chunks = _chunks(row.numel(), x.size(1))
        gathered: tuple[Tensor, ...]
        if len(chunks) <= 1:  # small graph: keep the gathered rows for the backward
            x_row, x_col = x.index_select(0, row), x.index_select(0, col)
            dot = torch.linalg.vecdot(x_row, x_col)
            gathered = (x_row, x_col)
        else:
            dot = torch.cat([
                torch.linalg.vecdot(x.index_select(0, row[a:b]), x.index_select(0, col[a:b]))
                for a, b in chunks
            ])
            gathered = ()
        cos = dot * inv_prod
        ctx.save_for_backward(x, row, col, inv, inv_prod, cos, *gathered)
        return cos

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]  # one output, one gradient
        x, row, col, inv, inv_prod, cos, *gathered = ctx.saved_tensors
        # d cos_uv / d x_u = x_v / (|x_u| |x_v|) - cos_uv x_u / |x_u|^2
        gc = grad * cos
        s = torch.zeros_like(inv).index_add_(0, row, gc).index_add_(0, col, gc)
        grad_x = x * (-s * inv * inv).unsqueeze(-1)  # one [N, F] pass, no zero fill
        a = (grad * inv_prod).unsqueeze(-1)
        if gathered:
            grad_x.index_add_(0, row, gathered[1] * a)
            grad_x.index_add_(0, col, gathered[0] * a)
        else:
            for lo, hi in _chunks(row.numel(), x.size(1)):
                r, c, w = row[lo:hi], col[lo:hi], a[lo:hi]
                grad_x.index_add_(0, r, x.index_select(0, c) * w)
                grad_x.index_add_(0, c, x.index_select(0, r) * w)
        return grad_x, None, None


def edge_similarity(x: Tensor, edge_index: Tensor, similarity: str = "cosine") -> Tensor:
    r"""Similarity of the two end nodes of every edge, :obj:`[E]`, in O(E).

    :obj:`"cosine"` lies in :math:`[-1, 1]`, :obj:`"half_cosine"` is
    :math:`(1 + \cos) / 2 \in [0, 1]`. A zero feature vector has cosine 0 with
    everything (and zero gradient), never NaN.

    Args:
        x (torch.Tensor): Node features :obj:`[N, F, ...]` (trailing dims flattened).
        edge_index (torch.Tensor): Edge indices :obj:`[2, E]`.
        similarity (str, optional): :obj:`"cosine"` or :obj:`"half_cosine"`.
            (default: :obj:`"cosine"`)
    """
    if similarity not in SIMILARITY:
        raise ValueError(f"similarity must be one of {SIMILARITY} (got {similarity!r})")
    cos = _EdgeCosine.apply(x.flatten(1), edge_index[0], edge_index[1])
    if similarity == "half_cosine":
        return 0.5 * (1.0 + cos)
    return cos


def merge_logit(score: Tensor, theta: Tensor, tau: float = 1.0, eps: float = 1e-6) -> Tensor:
    r"""Logit of the relaxed merge probability,
    :math:`z_e = (\mathrm{logit}(\mathrm{clip}(s_e, \epsilon, 1 - \epsilon)) - \theta) / \tau`,
    so :math:`p_e = \sigma(z_e)` and :math:`z_e > 0 \iff s_e > \sigma(\theta)`
    (inside the clip). Taking the margin in logit space keeps :math:`p_e` from
    saturating when the threshold nears 1, where near-duplicate features sit."""
    z = clipped_logit(score, eps) - theta
    return z if tau == 1.0 else z / tau


def clipped_logit(score: Tensor, eps: float = 1e-6) -> Tensor:
    r""":math:`\mathrm{logit}(\mathrm{clip}(s, \epsilon, 1 - \epsilon))` in at least
    float32: in bfloat16 or float16 :math:`1 - 10^{-6}` rounds to 1, and the logit of a
    score of 1 (near-identical neighbours, common at the start of training) is infinite,
    its gradient NaN (measured under ``precision="bf16-mixed"``)."""
    return torch.logit(score.to(torch.promote_types(score.dtype, torch.float32)), eps=eps)


def standardize_per_graph(
    value: Tensor, edge_batch: Tensor, dim_size: int, eps: float = 1e-4
) -> Tensor:
    r"""Standardise :obj:`value` :obj:`[E]` within each graph,
    :math:`(v_e - \mu_g) / \sqrt{\sigma_g^2 + \epsilon}`, with the mean and the (biased)
    variance over the edges of the graph :math:`g` of each edge. :obj:`dim_size` bounds
    the graph ids (the node count does; a static size keeps :mod:`torch.compile` free of
    a host sync). A graph whose edges all score alike gets 0 everywhere."""
    mean = scatter(value, edge_batch, 0, dim_size, reduce="mean")
    d = value - mean.index_select(0, edge_batch)
    var = scatter(d * d, edge_batch, 0, dim_size, reduce="mean")
    return d * torch.rsqrt(var + eps).index_select(0, edge_batch)


def forced_merges(z: Tensor, edge_batch: Tensor, num_clusters: Tensor) -> Tensor:
    r"""Merge decisions that give graph :math:`g` exactly :obj:`num_clusters[g]` clusters
    when its candidate edges form one tree (a chain, the text graph): the
    :math:`E_g - k_g + 1` edges with the highest merge logit merge, the other
    :math:`k_g - 1` are cut. :math:`k_g` is clipped into :math:`[1, E_g + 1]`. A forest of
    :math:`c` trees gets :math:`k_g + c - 1` clusters; with cycles, merged edges can be
    redundant and the count can fall below :math:`k_g`. O(E log E).

    The training analogue of teacher forcing: the model still chooses *where* the
    boundaries go (its own ranking of :math:`z`), the target only says how many, and
    :math:`-\log P(m)` of these decisions trains the threshold decision to agree.

    Args:
        z (torch.Tensor): merge logits :obj:`[E]`.
        edge_batch (torch.Tensor): graph of each edge :obj:`[E]`, values in
            :obj:`[0, B)`.
        num_clusters (torch.Tensor): wanted clusters per graph :obj:`[B]`.
    Returns a bool :obj:`[E]`.
    """
    if num_clusters.dim() > 1:
        raise ValueError("num_clusters must hold one count per graph, shape [B] "
                         f"(got shape {tuple(num_clusters.shape)})")
    num_edges = z.numel()
    if num_edges == 0:
        return z.new_zeros(0, dtype=torch.bool)
    # Sort by graph, then by descending logit; rank = position inside the graph's run,
    # counted from the graph's first edge (the edge-level ptr).
    order = torch.argsort(z.detach(), descending=True, stable=True)
    order = order[torch.argsort(edge_batch[order], stable=True)]
    per_graph = scatter(torch.ones_like(edge_batch), edge_batch, 0, num_clusters.numel())
    ptr = cumsum(per_graph)
    sorted_batch = edge_batch[order]
    rank = torch.arange(num_edges, device=z.device) - ptr[sorted_batch]
    cuts = (num_clusters.to(per_graph.device) - 1).clamp(min=0)
    keep = (per_graph - cuts).clamp(min=0)
    merged = torch.empty(num_edges, dtype=torch.bool, device=z.device)
    merged[order] = rank < keep[sorted_batch]
    return merged
