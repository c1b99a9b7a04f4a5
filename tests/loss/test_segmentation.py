"""segmentation_nll: the exact sum over contiguous segmentations, checked by enumeration."""

import itertools
import math

import pytest
import torch

from pyg_grapheme.loss import segmentation_log_likelihood, segmentation_nll


def brute_force(log_probs, z, target, align="left"):
    """log P(y) by enumerating all 2^(T-1) merge patterns of one chain; each segment
    speaks with its first (``align="left"``) or last (``"right"``) node."""
    T, M = log_probs.size(0), target.size(0)
    lm, lc = torch.nn.functional.logsigmoid(z), torch.nn.functional.logsigmoid(-z)
    terms = []
    for cuts in itertools.product([False, True], repeat=T - 1):
        if sum(cuts) != M - 1:
            continue
        total = sum(lc[t] if cut else lm[t] for t, cut in enumerate(cuts))
        starts = [0] + [t + 1 for t, cut in enumerate(cuts) if cut]
        ends = [s - 1 for s in starts[1:]] + [T - 1]
        for seg, node in enumerate(starts if align == "left" else ends):
            total = total + log_probs[node].gather(1, target[seg].view(-1, 1)).sum()
        terms.append(total)
    if not terms:
        return torch.tensor(float("-inf"), dtype=log_probs.dtype)
    return torch.logsumexp(torch.stack(terms), 0)


def make(sizes, targets, S=3, K=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    T = sum(sizes)
    log_probs = torch.randn(T, S, K, generator=g, dtype=dtype).log_softmax(-1)
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    z = torch.randn(T - sum(1 for s in sizes if s), generator=g, dtype=dtype)
    target = torch.randint(0, K, (sum(targets), S), generator=g)
    tbatch = torch.repeat_interleave(torch.arange(len(targets)), torch.tensor(targets))
    return log_probs, batch, z, target, tbatch


@pytest.mark.parametrize("align", ["left", "right"])
def test_matches_enumeration_on_a_mixed_batch(align):
    sizes, targets = [5, 1, 4, 6, 0], [2, 1, 4, 3, 0]
    lp, batch, z, target, tbatch = make(sizes, targets)
    ll = segmentation_log_likelihood(lp, batch, z, target, tbatch, len(sizes), align=align)
    assert ll[-1].item() == 0.0  # an empty canvas makes the empty answer
    node, edge, tnode = 0, 0, 0
    for b, (T, M) in enumerate(zip(sizes[:-1], targets[:-1], strict=True)):
        want = brute_force(lp[node:node + T], z[edge:edge + T - 1], target[tnode:tnode + M],
                           align)
        assert ll[b].item() == pytest.approx(want.item(), rel=1e-12, abs=1e-12)
        node, edge, tnode = node + T, edge + T - 1, tnode + M


@pytest.mark.parametrize("align", ["left", "right"])
def test_likelihood_is_a_distribution_over_answers(align):
    """Summed over every target of every length, P(y) is 1, whatever the merge logits."""
    S, K, T = 2, 2, 4
    lp, batch, z, _, _ = make([T], [1], S=S, K=K, seed=3)
    labels = list(itertools.product(range(K), repeat=S))
    total = 0.0
    for M in range(1, T + 1):
        for ys in itertools.product(labels, repeat=M):
            target = torch.tensor(ys).view(M, S)
            tb = torch.zeros(M, dtype=torch.long)
            total += math.exp(
                segmentation_log_likelihood(lp, batch, z, target, tb, 1, align=align).item())
    assert total == pytest.approx(1.0, rel=1e-10)


@pytest.mark.parametrize("align", ["left", "right"])
def test_gradcheck_float64(align):
    sizes, targets = [4, 1, 3], [2, 1, 3]
    lp, batch, z, target, tbatch = make(sizes, targets)
    logits = lp.clone().requires_grad_()
    z = z.clone().requires_grad_()

    def f(logits, z):
        return segmentation_nll(logits.log_softmax(-1), batch, z, target, tbatch, 3,
                                align=align)

    assert torch.autograd.gradcheck(f, (logits, z))


def test_impossible_pairs_are_named():
    lp, batch, z, target, tbatch = make([3, 2], [1, 3])
    ll = segmentation_log_likelihood(lp, batch, z, target, tbatch, 2)
    assert torch.isfinite(ll[0]) and torch.isneginf(ll[1])
    with pytest.raises(ValueError, match="pair 1 .* 3 graphemes and its canvas 2 nodes"):
        segmentation_nll(lp, batch, z, target, tbatch, 2)


def test_empty_pairs():
    lp, batch, z, target, tbatch = make([3, 2], [1, 2])
    # graph 2 is empty on both sides: likelihood 1
    ll = segmentation_log_likelihood(lp, batch, z, target, tbatch, 3)
    assert ll[2].item() == 0.0


def test_learning_the_threshold_direction():
    """With fixed emissions, the gradient moves the merge logit towards the segmentation
    the target needs: a 1-grapheme target wants every edge merged, a T-grapheme target
    every edge cut."""
    T = 5
    lp = torch.zeros(T, 1, 2).log_softmax(-1)  # uninformative emissions
    batch = torch.zeros(T, dtype=torch.long)
    for M, sign in ((1, -1.0), (T, 1.0)):
        z = torch.zeros(T - 1, requires_grad=True)
        target = torch.zeros(M, 1, dtype=torch.long)
        segmentation_nll(lp, batch, z, target, torch.zeros(M, dtype=torch.long), 1).backward()
        assert (torch.sign(z.grad) == sign).all(), (M, z.grad)


def test_mixed_precision_is_computed_in_float32():
    lp, batch, z, target, tbatch = make([5, 3], [2, 3], dtype=torch.float32)
    want = segmentation_log_likelihood(lp, batch, z, target, tbatch, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = segmentation_log_likelihood(lp.bfloat16(), batch, z.bfloat16(), target, tbatch, 2)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert torch.allclose(got, want, rtol=2e-2)


def test_threshold_gradient_agrees_with_finite_differences_on_24_chains():
    """Issue 10 item 4: d loss / d theta of the training loss on 24 chain cases (lengths
    3-8, targets of 1..T graphemes, features near or far from merging), float64: the
    pool's exact gradient, so the sign agrees in 24/24 and the value to 1e-6."""
    from pyg_grapheme.nn import ThresholdMergePool

    agree = 0
    for case in range(24):
        g = torch.Generator().manual_seed(case)
        T = 3 + case % 6
        M = 1 + (case * 7) % T
        pool = ThresholdMergePool(6, similarity="half_cosine", proj_channels=4,
                                  threshold=0.2 + 0.6 * torch.rand((), generator=g).item())
        pool = pool.double()
        x = torch.randn(T, 6, generator=g, dtype=torch.float64) * (0.2 if case % 2 else 2.0)
        ei = torch.stack([torch.arange(T - 1), torch.arange(1, T)])
        lp = torch.randn(T, 2, 3, generator=g, dtype=torch.float64).log_softmax(-1)
        target = torch.randint(0, 3, (M, 2), generator=g)
        batch, tbatch = torch.zeros(T, dtype=torch.long), torch.zeros(M, dtype=torch.long)

        def loss(pool=pool, x=x, ei=ei, lp=lp, batch=batch, target=target, tbatch=tbatch):
            return segmentation_nll(lp, batch, pool.merge_logits(x, ei), target, tbatch, 1)

        pool.zero_grad()
        loss().backward()
        grad = pool.theta.grad.item()
        with torch.no_grad():
            pool.theta += 1e-6
            up = loss().item()
            pool.theta -= 2e-6
            down = loss().item()
            pool.theta += 1e-6
        fd = (up - down) / 2e-6
        assert fd == pytest.approx(grad, rel=1e-6, abs=1e-9), (case, fd, grad)
        agree += (fd > 0) == (grad > 0)
    assert agree == 24


def test_right_alignment_is_the_left_one_of_the_mirrored_chains():
    """align="right" equals align="left" on each chain, merge logits and target read
    backwards (values and gradients), and differs from align="left" itself."""
    sizes, targets = [5, 3, 1, 6], [2, 3, 1, 4]
    lp, batch, z, target, tbatch = make(sizes, targets, seed=4)
    lp.requires_grad_(True)
    right = segmentation_nll(lp, batch, z, target, tbatch, len(sizes), align="right")
    (g_right,) = torch.autograd.grad(right, lp)
    lp_m, z_m, t_m = [], [], []
    node, edge, tnode = 0, 0, 0
    for T, M in zip(sizes, targets, strict=True):
        lp_m.append(lp[node:node + T].flip(0))
        z_m.append(z[edge:edge + T - 1].flip(0))
        t_m.append(target[tnode:tnode + M].flip(0))
        node, edge, tnode = node + T, edge + T - 1, tnode + M
    left = segmentation_nll(torch.cat(lp_m), batch, torch.cat(z_m), torch.cat(t_m), tbatch,
                            len(sizes))
    (g_left,) = torch.autograd.grad(left, lp)
    torch.testing.assert_close(right, left, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_right, g_left, rtol=1e-12, atol=1e-12)
    assert abs(right.item() - segmentation_nll(lp, batch, z, target, tbatch).item()) > 1e-3
    with pytest.raises(ValueError, match="align"):
        segmentation_nll(lp, batch, z, target, tbatch, align="centre")
