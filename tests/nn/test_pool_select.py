"""pyg_grapheme.nn.pool.select: the parts of the select step that the layer tests do not
reach (the chunked cosine kernel of large graphs, bad input)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pyg_grapheme.nn.pool import select
from pyg_grapheme.nn.pool.select import edge_similarity, forced_merges


def test_chunked_cosine_matches_the_one_pass_kernel_and_torch(monkeypatch):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 8, generator=g, dtype=torch.float64)
    x[3] = 0.0  # a zero vector: cosine 0, gradient 0
    ei = torch.randint(0, 40, (2, 300), generator=g)
    w = torch.randn(300, generator=g, dtype=torch.float64)

    def run():
        xr = x.clone().requires_grad_()
        cos = edge_similarity(xr, ei)
        (grad,) = torch.autograd.grad((cos * w).sum(), xr)
        return cos.detach(), grad

    one_pass = run()
    monkeypatch.setattr(select, "_CHUNK_ELEMENTS", 8 * 7)  # 7 edges a chunk: 43 chunks
    assert len(select._chunks(300, 8)) == 43
    chunked = run()
    torch.testing.assert_close(chunked[0], one_pass[0])
    torch.testing.assert_close(chunked[1], one_pass[1])
    # the oracle: torch's cosine (zero vector excepted, where torch divides by eps)
    ok = (ei != 3).all(0)
    want = F.cosine_similarity(x[ei[0]], x[ei[1]], dim=-1)
    torch.testing.assert_close(chunked[0][ok], want[ok])
    assert (chunked[0][~ok] == 0).all() and (chunked[1][3] == 0).all()
    # the chunked backward, gradcheck'd (nonzero rows: at 0 the cosine has no derivative)
    xr = x[10:20].clone().requires_grad_()
    small = ei[:, ((ei >= 10) & (ei < 20)).all(0)] - 10
    assert small.size(1) > 7  # more than one chunk
    assert torch.autograd.gradcheck(lambda t: edge_similarity(t, small), (xr,))


def test_bad_input_is_named():
    x = torch.randn(4, 3)
    ei = torch.tensor([[0, 1, 2], [1, 2, 3]])
    with pytest.raises(ValueError, match="similarity must be one of"):
        edge_similarity(x, ei, "dot")
    with pytest.raises(ValueError, match="num_clusters must hold one count per graph"):
        forced_merges(torch.randn(3), torch.zeros(3, dtype=torch.long), torch.ones(1, 1))
    # a 0-d count is one graph, as before
    assert forced_merges(torch.tensor([0.3, -1.0, 2.0]), torch.zeros(3, dtype=torch.long),
                         torch.tensor(2)).tolist() == [True, False, True]


def test_merge_logit_of_a_bf16_score_of_one_is_finite():
    """In bfloat16 ``1 - eps`` rounds to 1: the clip must happen in float32, or a score of
    1 (identical neighbours) gives an infinite logit and a NaN gradient (the cause of
    NaN under ``precision="bf16-mixed"``)."""
    from pyg_grapheme.nn.pool.select import clipped_logit, merge_logit

    score = torch.tensor([1.0, 0.5, 0.0], dtype=torch.bfloat16, requires_grad=True)
    assert torch.isinf(torch.logit(score.detach(), eps=1e-6)[0])  # what went wrong
    z = merge_logit(score, torch.tensor(0.0))
    assert z.dtype == torch.float32 and torch.isfinite(z).all()
    z.sum().backward()
    assert torch.isfinite(score.grad).all()
    x = torch.rand(5, dtype=torch.float64)
    assert clipped_logit(x).dtype == torch.float64  # float32 and float64 unchanged
    assert torch.equal(clipped_logit(x), torch.logit(x, eps=1e-6))
