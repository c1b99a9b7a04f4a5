"""ThresholdMergePool as a PyG pooling layer: EdgePooling's calling conventions, the
per-graph score normalisation (the default without a projection), torch.compile."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch, Data
from torch_geometric.nn import EdgePooling, GCNConv, Sequential, global_mean_pool
from torch_geometric.utils import to_undirected

from pyg_grapheme.nn import ThresholdMergePool
from pyg_grapheme.nn.merge_pool import PoolOutput, UnpoolInfo, standardize_per_graph


def grid_batch(num_graphs: int = 3, side: int = 5, dim: int = 6, seed: int = 0) -> Batch:
    """Pixel-like grids whose features come in two blobs plus noise."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.arange(side * side).view(side, side)
    ei = torch.cat([torch.stack([idx[:, :-1].reshape(-1), idx[:, 1:].reshape(-1)]),
                    torch.stack([idx[:-1].reshape(-1), idx[1:].reshape(-1)])], dim=1)
    ei = to_undirected(ei)
    data = []
    for _ in range(num_graphs):
        proto = torch.randn(2, dim, generator=g)
        blob = (torch.rand(side * side, generator=g) > 0.5).long()
        x = proto[blob] + 0.3 * torch.randn(side * side, dim, generator=g)
        data.append(Data(x=x, edge_index=ei))
    return Batch.from_data_list(data)


def test_output_unpacks_like_edge_pooling():
    b = grid_batch()
    ours = ThresholdMergePool(6)(b.x, b.edge_index, b.batch)
    theirs = EdgePooling(6)(b.x, b.edge_index, b.batch)
    assert isinstance(ours, PoolOutput) and len(ours) == len(theirs) == 4
    x, edge_index, batch, info = ours
    for a, c in zip((x, edge_index, batch), theirs[:3], strict=True):
        assert a.dim() == c.dim() and a.dtype == c.dtype
    assert isinstance(info, UnpoolInfo)
    # EdgePooling's UnpoolInfo fields first, then the rest; all readable by name
    assert info._fields[:3] == type(theirs[3])._fields[:3] == ("edge_index", "cluster", "batch")
    for name in ("edge_weight", "node_weight", "cluster", "merge_prob", "merged", "log_prob"):
        assert getattr(ours, name) is getattr(info, name)
    assert info.edge_index is b.edge_index and info.batch is b.batch
    assert ours.edge_weight.shape == (edge_index.size(1),)
    assert ours.node_weight.shape == (x.size(0),)


def test_edge_weight_is_keyword_only():
    b = grid_batch()
    pool = ThresholdMergePool(6)
    w = torch.rand(b.edge_index.size(1))
    with pytest.raises(TypeError):
        pool(b.x, b.edge_index, b.batch, w)
    out = pool(b.x, b.edge_index, b.batch, edge_weight=w)
    assert out.edge_weight.shape == (out.edge_index.size(1),)


def test_unpool_mirrors_edge_pooling():
    b = grid_batch()
    pool = ThresholdMergePool(6)
    x, _, _, info = pool(b.x, b.edge_index, b.batch)
    ex, _, _, einfo = EdgePooling(6)(b.x, b.edge_index, b.batch)
    up, ei, batch = pool.unpool(x, info)
    eup, eei, ebatch = EdgePooling.unpool(None, ex, einfo)
    assert up.shape == eup.shape == b.x.shape
    assert torch.equal(ei, eei) and torch.equal(batch, ebatch)
    assert torch.equal(up, x[info.cluster])
    with pytest.raises(TypeError, match="unpool_info"):
        pool.unpool(x, info.cluster)


def test_inside_pyg_sequential_like_edge_pooling():
    b = grid_batch(4)

    def model(pool):
        return Sequential("x, edge_index, batch", [
            (GCNConv(6, 16), "x, edge_index -> x"),
            torch.nn.ReLU(),
            (pool, "x, edge_index, batch -> x, edge_index, batch, info"),
            (GCNConv(16, 16), "x, edge_index -> x"),
            (global_mean_pool, "x, batch -> x"),
        ])

    for pool in (ThresholdMergePool(16), EdgePooling(16)):
        torch.manual_seed(0)
        net = model(pool)
        y = net(b.x, b.edge_index, b.batch)
        assert y.shape == (4, 16)
        y.sum().backward()
        assert all(p.grad is not None for p in net.parameters() if p.dim() > 1)


def test_graph_norm_is_the_default_without_projection():
    assert ThresholdMergePool(6).score_norm == "graph"
    assert ThresholdMergePool(6, proj_channels=4).score_norm == "none"
    pool = ThresholdMergePool(6, threshold=0.8)
    assert float(pool.theta.detach()) == pytest.approx(0.8416, abs=1e-4)  # Phi^-1(0.8)
    assert pool.learnt_threshold() == pytest.approx(0.8)
    assert ThresholdMergePool(6, score_norm="none", threshold=0.8).learnt_threshold() == (
        pytest.approx(0.8))


@pytest.mark.parametrize("threshold", [0.2, 0.5, 0.8])
def test_graph_norm_threshold_is_a_quantile_of_each_graph(threshold):
    # Near-parallel features (cosines 0.9-1, as after a message-passing layer): the
    # threshold still picks a share of each graph's edges, where a fixed cosine threshold
    # merges all or nothing.
    b = grid_batch(8, side=8, seed=1)
    x = b.x + 20.0
    out = ThresholdMergePool(6, threshold=threshold)(x, b.edge_index, b.batch)
    ratio = out.merged.float().mean().item()
    # exact for Gaussian scores; these are bimodal (two feature blobs)
    assert abs(ratio - (1 - threshold)) < 0.15
    assert ThresholdMergePool(6, score_norm="none", threshold=threshold)(
        x, b.edge_index, b.batch).merged.all()


def test_graph_norm_pools_each_graph_of_a_batch_as_alone():
    b = grid_batch(3, seed=2)
    b.x[b.batch == 1] *= 3.0  # another scale in one graph: no effect on the others
    pool = ThresholdMergePool(6, threshold=0.6)
    out = pool(b.x, b.edge_index, b.batch)
    for k, d in enumerate(b.to_data_list()):
        alone = pool(d.x, d.edge_index)
        mask = b.batch[b.edge_index[0]] == k
        assert torch.equal(out.merged[mask], alone.merged)
        torch.testing.assert_close(out.merge_prob[mask], alone.merge_prob)
        torch.testing.assert_close(out.x[out.batch == k], alone.x)


def test_standardize_per_graph_matches_a_loop_and_gradcheck():
    g = torch.Generator().manual_seed(3)
    v = torch.randn(30, generator=g, dtype=torch.float64)
    eb = torch.randint(0, 4, (30,), generator=g).sort().values
    z = standardize_per_graph(v, eb, 10)
    for k in range(4):
        m = eb == k
        want = (v[m] - v[m].mean()) / torch.sqrt(v[m].var(unbiased=False) + 1e-4)
        torch.testing.assert_close(z[m], want)
    assert torch.autograd.gradcheck(
        lambda t: standardize_per_graph(t, eb, 10), (v.clone().requires_grad_(),))


def test_graph_norm_merge_logits_gradcheck():
    b = grid_batch(2, side=3)
    pool = ThresholdMergePool(6, tau=2.0).double()
    x = b.x.double().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, theta: (pool.theta.data.copy_(theta), pool.merge_logits(
            x, b.edge_index, b.batch))[1],
        (x, torch.tensor(0.3, dtype=torch.float64)))
    # theta's own gradient: dz/dtheta = -1/tau
    z = pool.merge_logits(x, b.edge_index, b.batch)
    (g,) = torch.autograd.grad(z.sum(), pool.theta)
    assert float(g) == pytest.approx(-z.numel() / 2.0)


def test_merge_logits_without_batch_is_one_graph():
    b = grid_batch(1)
    pool = ThresholdMergePool(6)
    torch.testing.assert_close(pool.merge_logits(b.x, b.edge_index),
                               pool.merge_logits(b.x, b.edge_index, b.batch))


COMPILE_CASES = [  # (layer kwargs, forward kwargs): the paths of the forward
    ({}, {}),
    (dict(score_norm="none", aggr="attention", proj_channels=4, edge_reduce="sum"),
     dict(edge_weight=torch.rand(144, 2))),  # [E, D] edge features
    ({}, dict(num_clusters=torch.tensor([3, 5, 2]))),  # forced merges: the training path
]


@pytest.mark.parametrize(("kwargs", "call"), COMPILE_CASES)
def test_compile_one_graph_break_fast(kwargs, call):
    """The partition step (data-dependent shapes) is the only graph break on every path;
    fast check with dynamo's explain (no codegen). Scoring, forced merges, the
    aggregation and the estimator's autograd node all trace."""
    torch._dynamo.reset()
    b = grid_batch(3, side=4)
    explain = torch._dynamo.explain(ThresholdMergePool(6, **kwargs))(
        b.x.clone().requires_grad_(), b.edge_index, b.batch, **call)
    assert explain.graph_break_count == 1, [r.reason for r in explain.break_reasons]
    assert "compiler.disable" in str(explain.break_reasons[0].reason)


@pytest.mark.parametrize(("kwargs", "call"), COMPILE_CASES)
def test_select_connect_coarsen_is_the_forward(kwargs, call):
    """The three steps a caller composes give the forward's output, bit for bit."""
    b = grid_batch(3, side=4)
    torch.manual_seed(0)
    pool = ThresholdMergePool(6, **kwargs)
    x = b.x.clone().requires_grad_()
    out = pool(x, b.edge_index, b.batch, **call)
    sel = pool.select(x, b.edge_index, b.batch, num_clusters=call.get("num_clusters"))
    part = pool.connect(sel)
    assert part.quotient.num_clusters == out.x.size(0)
    assert (part.kappa is not None) == ("num_clusters" not in call)  # the count gradient
    steps = pool.coarsen(x, sel, part, edge_weight=call.get("edge_weight"))
    for a, c in zip(out, steps, strict=True):
        for u, v in zip(a if isinstance(a, tuple) else (a,), c if isinstance(c, tuple) else (c,),
                        strict=True):
            assert torch.equal(u, v)


class Nested(torch.nn.Module):
    """A model that calls the pool as a module."""

    def __init__(self) -> None:
        super().__init__()
        self.lin, self.pool = torch.nn.Linear(6, 6), ThresholdMergePool(6)

    def forward(self, x, edge_index, batch):
        return self.pool(self.lin(x), edge_index, batch).x.sum()


class Composed(Nested):
    """The same model, calling the pool's steps from its own frame."""

    def forward(self, x, edge_index, batch):
        h = self.lin(x)
        sel = self.pool.select(h, edge_index, batch)
        return self.pool.coarsen(h, sel, self.pool.connect(sel)).x.sum()


def test_composed_steps_split_only_the_callers_graph():
    """Dynamo (``nested_graph_breaks`` off, the default) splits every frame of the call
    stack at a break inside a nested call: the pool called as a module costs the caller 3
    breaks (4 graphs); its steps composed in the caller's frame, 1 (what
    GraphTransformNet does)."""
    b = grid_batch(3, side=4)
    counts = []
    for model in (Nested(), Composed()):
        torch._dynamo.reset()
        counts.append(torch._dynamo.explain(model)(b.x, b.edge_index, b.batch).graph_break_count)
    assert counts == [3, 1]


def compiled_matches_eager(backend: str, kwargs: dict, call: dict) -> None:
    torch._dynamo.reset()
    b = grid_batch(3, side=4)
    torch.manual_seed(0)
    pool = ThresholdMergePool(6, **kwargs)
    compiled = torch.compile(pool, backend=backend)
    x1, x2 = b.x.clone().requires_grad_(), b.x.clone().requires_grad_()
    out1, out2 = pool(x1, b.edge_index, b.batch, **call), compiled(x2, b.edge_index, b.batch,
                                                                    **call)
    torch.testing.assert_close(out1.x, out2.x)
    for name in ("edge_index", "batch", "cluster", "merged"):
        assert torch.equal(getattr(out1, name), getattr(out2, name)), name
    for name in ("merge_prob", "log_prob", "node_weight", "edge_weight"):
        torch.testing.assert_close(getattr(out1, name), getattr(out2, name))
    params = list(pool.parameters())
    grads = []
    for x, out in ((x1, out1), (x2, out2)):
        w = torch.linspace(0.5, 2.0, out.node_weight.numel())
        loss = (out.x.pow(2).sum() + (out.node_weight * w).sum() + out.edge_weight.sum()
                + out.log_prob.sum())
        grads.append(torch.autograd.grad(loss, [x, *params]))
    for a, c in zip(*grads, strict=True):  # float32: inductor's fused kernels reassociate
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-4)


def test_compile_aot_eager_matches_eager():
    """AOT autograd traces forward and backward (the custom cosine and expected-count
    nodes included) as inductor would, without its codegen: seconds, not minutes.
    Default layer and the forced-count path that GraphTransformNet trains with."""
    compiled_matches_eager("aot_eager", dict(proj_channels=4), {})
    compiled_matches_eager("aot_eager", {}, dict(num_clusters=torch.tensor([3, 5, 2])))


@pytest.mark.parametrize(("kwargs", "call"), [
    COMPILE_CASES[0],  # the default layer: inductor's codegen in the default run (~30 CPU s)
    *(pytest.param(*case, marks=pytest.mark.slow) for case in COMPILE_CASES[1:])])
def test_compile_inductor_matches_eager(kwargs, call):
    compiled_matches_eager("inductor", kwargs, call)


def test_digits_default_does_not_collapse_an_image():
    """The collapse the defaults had (issue 14): after GraphConv + ReLU neighbouring
    pixels have cosine ~0.97, so threshold 0.5 on the cosine merged every 8x8 digit into
    one node; the per-graph normalisation merges about half of each image's edges."""
    datasets = pytest.importorskip("sklearn.datasets")
    from torch_geometric.nn import GraphConv

    images = torch.tensor(datasets.load_digits().images[:64], dtype=torch.float32) / 16
    idx = torch.arange(64).view(8, 8)
    ei = to_undirected(torch.cat([
        torch.stack([idx[:, :-1].reshape(-1), idx[:, 1:].reshape(-1)]),
        torch.stack([idx[:-1].reshape(-1), idx[1:].reshape(-1)])], dim=1))
    rows, cols = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    pos = torch.stack([rows.reshape(-1), cols.reshape(-1)], 1) / 7
    b = Batch.from_data_list([Data(x=torch.cat([im.reshape(-1, 1), pos], 1), edge_index=ei)
                              for im in images])
    torch.manual_seed(0)
    h = torch.relu(GraphConv(3, 32)(b.x, b.edge_index))
    with torch.no_grad():
        old = ThresholdMergePool(32, score_norm="none")(h, b.edge_index, b.batch)
        new = ThresholdMergePool(32)(h, b.edge_index, b.batch)
    assert old.x.size(0) / 64 < 2  # the collapse
    nodes = torch.bincount(new.batch, minlength=64).float()
    assert 0.35 < new.merged.float().mean() < 0.65
    assert nodes.min() >= 4 and nodes.mean() > 10


@pytest.mark.parametrize("kwargs", [{}, dict(score_norm="none", proj_channels=4, tau=2.0)])
def test_selection_carries_the_merge_logits_bitwise(kwargs):
    """``select`` returns the logits ``merge_logits`` computes (a model reads them there
    instead of scoring the edges twice): equal bit for bit, with the same gradient."""
    b = grid_batch(2, side=3)
    pool = ThresholdMergePool(6, **kwargs)
    x = b.x.clone().requires_grad_()
    sel = pool.select(x, b.edge_index, b.batch)
    z = pool.merge_logits(x, b.edge_index, b.batch)
    assert torch.equal(sel.merge_logit, z)
    assert torch.equal(torch.sigmoid(sel.merge_logit), sel.merge_prob)
    (g1,) = torch.autograd.grad(sel.merge_logit.square().sum(), x)
    (g2,) = torch.autograd.grad(z.square().sum(), x)
    assert torch.equal(g1, g2)
