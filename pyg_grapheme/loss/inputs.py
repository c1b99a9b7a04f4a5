r"""Reading the two sides of a graph-to-graph loss: validation, padding, reductions.

A *side* is a PyG ``Batch``-like object (``x`` ``[N, D]`` or ``[N, S, K]``,
``edge_index`` ``[2, E]``, optional ``edge_weight`` ``[E]`` in [0, 1], optional
``node_weight`` ``[N]`` >= 0, ``batch`` ``[N]`` sorted, ``num_graphs``). Graph ``i`` of the
prediction is compared with graph ``i`` of the target, so both sides must hold the same
number of graphs and the same feature shape. Every check raises ``ValueError`` naming the
side and the field.

Both sides are computed in one dtype: float32 at least, float64 if either side is float64
(bfloat16/float16 are cast up, since the solvers' matmuls lose the marginals in 16 bits),
and :func:`_autocast_off` keeps autocast from casting them back down.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch_geometric.utils import cumsum, to_dense_batch

REDUCTIONS = ("mean", "sum", "none")


@dataclass
class _Side:
    """One validated side, flat (PyG layout), in the compute dtype."""

    x: Tensor  # [N, D] or [N, S, K], compute dtype
    edge_index: Tensor  # [2, E] long
    edge_weight: Tensor | None  # [E] or None (= 1)
    node_weight: Tensor | None  # [N] or None (= 1)
    batch: Tensor  # [N] long, sorted
    num_graphs: int


def _read_side(g: Any, name: str, dtype: torch.dtype | None = None) -> _Side:
    """Validate one side (``name`` is ``"pred"`` or ``"target"``, used in the errors)."""
    x = getattr(g, "x", None)
    if not isinstance(x, Tensor):
        raise ValueError(f"{name}.x must be a tensor of node features, got {type(x).__name__}")
    if x.dim() not in (2, 3):
        raise ValueError(f"{name}.x must have shape [N, D] or [N, S, K], got {tuple(x.shape)}")
    N = x.size(0)
    dev = x.device
    if x.numel() and not bool(torch.isfinite(x.detach()).all()):
        raise ValueError(f"{name}.x must be finite, got NaN or Inf")
    edge_index = getattr(g, "edge_index", None)
    if edge_index is None:
        edge_index = torch.empty(2, 0, dtype=torch.long, device=dev)
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f"{name}.edge_index must have shape [2, E], got {tuple(edge_index.shape)}")
    edge_index = edge_index.long()
    E = edge_index.size(1)
    if E and (int(edge_index.min()) < 0 or int(edge_index.max()) >= N):
        raise ValueError(f"{name}.edge_index refers to nodes outside 0..{N - 1}")
    dtype = dtype or torch.promote_types(x.dtype, torch.float32)
    w = getattr(g, "edge_weight", None)
    if w is not None:
        if w.shape != (E,):
            raise ValueError(f"{name}.edge_weight must have shape [{E}], got {tuple(w.shape)}")
        if E:
            lo, hi = float(w.detach().min()), float(w.detach().max())
            if not (lo >= 0.0 and hi <= 1.0):  # also catches nan
                raise ValueError(
                    f"{name}.edge_weight must lie in [0, 1], got values in [{lo}, {hi}]"
                )
        w = w.to(dtype)
    a = getattr(g, "node_weight", None)
    if a is not None:
        if a.shape != (N,):
            raise ValueError(f"{name}.node_weight must have shape [{N}], got {tuple(a.shape)}")
        if N:
            lo, hi = float(a.detach().min()), float(a.detach().max())
            if not (lo >= 0.0 and math.isfinite(hi)):
                raise ValueError(
                    f"{name}.node_weight must be finite and >= 0, got values in [{lo}, {hi}]"
                )
        a = a.to(dtype)
    batch = getattr(g, "batch", None)
    num_graphs = getattr(g, "num_graphs", None)
    if batch is None:
        batch = torch.zeros(N, dtype=torch.long, device=dev)
        num_graphs = 1 if num_graphs is None else int(num_graphs)
    else:
        batch = batch.long()
        if batch.shape != (N,):
            raise ValueError(f"{name}.batch must have shape [{N}], got {tuple(batch.shape)}")
        if N > 1 and bool((batch[1:] < batch[:-1]).any()):
            raise ValueError(f"{name}.batch must be sorted (PyG collation order)")
        if num_graphs is None:
            num_graphs = int(batch.max()) + 1 if N else 1
        num_graphs = int(num_graphs)
        if N and int(batch.max()) >= num_graphs:
            raise ValueError(f"{name}.batch has graph ids >= num_graphs={num_graphs}")
    return _Side(x.to(dtype), edge_index, w, a, batch, num_graphs)


def _read_pair(pred: Any, target: Any) -> tuple[_Side, _Side]:
    """Validate both sides; float32 at least, float64 if either side is float64."""
    for name, g in (("pred", pred), ("target", target)):
        if not isinstance(getattr(g, "x", None), Tensor):
            raise ValueError(f"{name}.x must be a tensor of node features")
    dtype = torch.promote_types(torch.promote_types(pred.x.dtype, target.x.dtype), torch.float32)
    if not dtype.is_floating_point:
        dtype = torch.float32
    if dtype not in (torch.float32, torch.float64):  # bf16/fp16 combinations
        dtype = torch.float32
    p = _read_side(pred, "pred", dtype)
    t = _read_side(target, "target", dtype)
    if p.x.shape[1:] != t.x.shape[1:]:
        raise ValueError(
            "pred.x and target.x must have the same feature width: "
            f"{tuple(p.x.shape[1:])} vs {tuple(t.x.shape[1:])}"
        )
    if p.num_graphs != t.num_graphs:
        raise ValueError(
            f"pred has {p.num_graphs} graphs but target has {t.num_graphs}: "
            "the loss compares graph i of pred with graph i of target"
        )
    return p, t


@dataclass
class _Dense:
    """One side padded to ``[B, n, ...]``; edges as (graph, local source, local target)."""

    x: Tensor  # [B, n, ...]
    mass: Tensor  # [B, n] node masses, 0 on padding
    eb: Tensor  # [E] graph of each edge
    src: Tensor  # [E] local index of the source
    dst: Tensor  # [E] local index of the target
    w: Tensor | None  # [E]
    n: int


def _dense(s: _Side) -> _Dense:
    """Pad a side with ``to_dense_batch`` (masses 0 on padding)."""
    B, N = s.num_graphs, s.x.size(0)
    x, _ = to_dense_batch(s.x, s.batch, batch_size=B)
    n = x.size(1)
    a = s.x.new_ones(N) if s.node_weight is None else s.node_weight
    mass, _ = to_dense_batch(a, s.batch, batch_size=B, max_num_nodes=n)
    # The pointer is rebuilt from the validated ``batch`` rather than read from
    # ``Batch.ptr``, which a caller may have left stale after editing ``batch``.
    ptr = cumsum(torch.bincount(s.batch, minlength=B))
    pos = torch.arange(N, device=x.device) - ptr[s.batch]
    src, dst = s.edge_index
    return _Dense(x, mass, s.batch[src], pos[src], pos[dst], s.edge_weight, n)


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _reduce(v: Tensor, reduction: str) -> Tensor:
    """Reduce per-pair values ``[B]``: ``"mean"`` (0 for an empty batch), ``"sum"``,
    ``"none"``."""
    _check_reduction(reduction)
    if reduction == "none":
        return v
    if reduction == "sum":
        return v.sum()
    return v.mean() if v.numel() else v.sum()


def _autocast_off(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``fn(pred, target, **kwargs)`` with autocast disabled on the device of ``pred.x``.

    Under ``bf16-mixed`` / ``16-mixed`` the matmuls of the Sinkhorn iterations would run
    in 16 bits and turn every gradient into NaN; the inputs are cast up instead (float32,
    or float64 if given) by :func:`_read_pair`.
    """

    @functools.wraps(fn)
    def wrapper(pred: Any, target: Any, **kwargs: Any) -> Any:
        x = getattr(pred, "x", None)
        dev = x.device.type if isinstance(x, Tensor) else "cpu"
        if torch.is_autocast_enabled(dev):
            with torch.autocast(device_type=dev, enabled=False):
                return fn(pred, target, **kwargs)
        return fn(pred, target, **kwargs)

    return wrapper
