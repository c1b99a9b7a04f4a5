"""ThresholdMergePool against PyG's pooling layers on real data: scikit-learn's bundled
8x8 digits (1,797 images, 10 classes, no download) as pixel graphs.

    python experiments/pool_digits.py                       # the table (one thread)
    python experiments/pool_digits.py --fixed 0.3 0.6 0.9   # + frozen-threshold rows
    python experiments/pool_digits.py --diagnose            # why the old default collapsed

One node per pixel (features: intensity / 16, row / 7, column / 7), 4-neighbour edges in
both directions (224 per image). The same model for every pool:

    GraphConv -> ReLU -> pool -> GraphConv -> ReLU -> global mean -> Linear

trained with Adam (lr 0.01, batch 64) on a stratified 80/20 split per seed. Reported:
test accuracy mean +- sd over the seeds, train CPU seconds per epoch (ratio against
EdgePooling, measured in the same run), the pool's own forward+backward CPU ms on one
training batch (median of repeats; ratio against EdgePooling), nodes left per image after
pooling on the test set, and for ThresholdMergePool the learnt threshold sigma(theta)
and merge ratio (merged edges / edges). ``--fixed`` adds ThresholdMergePool rows whose
threshold is frozen (theta not trained) at each value: what learning it buys.
Needs scikit-learn (in the ``test`` extra: ``pip install -e ".[test]"``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch_geometric.data import Batch, Data
from torch_geometric.loader import DataLoader
from torch_geometric.nn import (
    ASAPooling,
    ClusterPooling,
    EdgePooling,
    GraphConv,
    SAGPooling,
    TopKPooling,
    global_mean_pool,
)

from pyg_grapheme.nn import ThresholdMergePool

# ClusterPooling is opt-in (--pools ClusterPooling): ~40x ThresholdMergePool's time per
# batch here, and it goes dense in evaluation.
POOLS = ["ThresholdMergePool", "EdgePooling", "ASAPooling", "SAGPooling", "TopKPooling",
         "none"]
CHOICES = POOLS + ["ClusterPooling"]


def grid_edges(side: int = 8) -> torch.Tensor:
    idx = torch.arange(side * side).view(side, side)
    right = torch.stack([idx[:, :-1].reshape(-1), idx[:, 1:].reshape(-1)])
    down = torch.stack([idx[:-1, :].reshape(-1), idx[1:, :].reshape(-1)])
    e = torch.cat([right, down], dim=1)
    return torch.cat([e, e.flip(0)], dim=1)


def load_graphs() -> list[Data]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32) / 16.0  # [1797, 8, 8]
    rows, cols = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    pos = torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=1) / 7.0
    edge_index = grid_edges()
    return [
        Data(x=torch.cat([img.reshape(-1, 1), pos], dim=1), edge_index=edge_index,
             y=torch.tensor([int(label)]))
        for img, label in zip(images, digits.target, strict=True)
    ]


def split(graphs: list[Data], seed: int) -> tuple[list[Data], list[Data]]:
    """Stratified 80/20 split."""
    g = torch.Generator().manual_seed(seed)
    train, test = [], []
    labels = torch.tensor([int(d.y) for d in graphs])
    for c in range(10):
        idx = (labels == c).nonzero().view(-1)
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        cut = int(round(0.8 * idx.numel()))
        train += [graphs[i] for i in idx[:cut]]
        test += [graphs[i] for i in idx[cut:]]
    return train, test


def make_pool(name: str, hidden: int, fixed: float | None = None,
              reduce: str = "mean") -> torch.nn.Module | None:
    if name == "ThresholdMergePool":
        if fixed is None:
            return ThresholdMergePool(hidden, reduce=reduce)
        pool = ThresholdMergePool(hidden, reduce=reduce, threshold=fixed)
        pool.theta.requires_grad_(False)
        return pool
    if name == "EdgePooling":
        return EdgePooling(hidden)
    if name == "ASAPooling":
        return ASAPooling(hidden, ratio=0.5)
    if name == "SAGPooling":
        return SAGPooling(hidden, ratio=0.5)
    if name == "TopKPooling":
        return TopKPooling(hidden, ratio=0.5)
    if name == "ClusterPooling":
        return ClusterPooling(hidden)
    return None


def apply_pool(pool, x, edge_index, batch):
    """Every pool's output as (x, edge_index, batch, edge_weight, node_weight)."""
    if pool is None:
        return x, edge_index, batch, None, None
    if isinstance(pool, (ThresholdMergePool, EdgePooling, ClusterPooling)):
        x, edge_index, batch, info = pool(x, edge_index, batch)  # the same unpacking
        if isinstance(pool, ThresholdMergePool):
            return x, edge_index, batch, info.edge_weight, info.node_weight
        x, edge_index, batch, _ = pool(x, edge_index, batch)
        return x, edge_index, batch, None, None
    if isinstance(pool, ASAPooling):
        x, edge_index, edge_weight, batch, _ = pool(x, edge_index, batch=batch)
        return x, edge_index, batch, edge_weight, None
    x, edge_index, _, batch, _, _ = pool(x, edge_index, batch=batch)  # TopK, SAG
    return x, edge_index, batch, None, None


class Classifier(torch.nn.Module):
    def __init__(self, pool: str, hidden: int = 32, fixed: float | None = None,
                 reduce: str = "mean"):
        super().__init__()
        self.conv1 = GraphConv(3, hidden)
        self.pool = make_pool(pool, hidden, fixed, reduce)
        self.conv2 = GraphConv(hidden, hidden)
        self.lin = torch.nn.Linear(hidden, 10)

    def forward(self, x, edge_index, batch):
        x = F.relu(self.conv1(x, edge_index))
        x, edge_index, batch, edge_weight, node_weight = apply_pool(
            self.pool, x, edge_index, batch)
        self.last_num_nodes = x.size(0)
        x = F.relu(self.conv2(x, edge_index, edge_weight))
        if node_weight is not None:
            # masses are 1 in value: the same mean, plus the count gradient to theta
            x = x * node_weight.unsqueeze(-1)
        return self.lin(global_mean_pool(x, batch))


def evaluate(model, loader) -> tuple[float, float]:
    """(accuracy, mean nodes per graph after pooling)."""
    model.eval()
    correct = nodes = total = 0
    with torch.no_grad():
        for data in loader:
            pred = model(data.x, data.edge_index, data.batch).argmax(-1)
            correct += int((pred == data.y).sum())
            nodes += model.last_num_nodes
            total += data.num_graphs
    return correct / total, nodes / total


def pool_ms(model, data: Batch, repeats: int = 10) -> float:
    """The pool's forward+backward CPU ms on one batch of trained first-layer features."""
    if model.pool is None:
        return 0.0
    model.train()
    with torch.no_grad():
        h = F.relu(model.conv1(data.x, data.edge_index))
    times = []
    for _ in range(repeats):
        x = h.clone().requires_grad_()
        start = time.process_time()
        xo, _, _, ew, nw = apply_pool(model.pool, x, data.edge_index, data.batch)
        loss = xo.sum()
        if nw is not None:
            loss = loss + nw.sum() + ew.sum()
        loss.backward()
        times.append(time.process_time() - start)
    return 1000 * statistics.median(times)


def merge_ratio(pool: ThresholdMergePool, model, loader) -> float:
    merged = edges = 0
    model.eval()
    with torch.no_grad():
        for data in loader:
            h = F.relu(model.conv1(data.x, data.edge_index))
            out = pool(h, data.edge_index, data.batch)
            merged += int(out.merged.sum())
            edges += out.merged.numel()
    return merged / edges


def run(pool: str, graphs, seed: int, epochs: int, hidden: int,
        fixed: float | None = None, reduce: str = "mean") -> dict:
    train, test = split(graphs, seed)
    torch.manual_seed(seed)
    model = Classifier(pool, hidden, fixed, reduce)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.01)
    loader = DataLoader(train, batch_size=64, shuffle=True)
    start = time.process_time()
    for _ in range(epochs):
        model.train()
        for data in loader:
            opt.zero_grad()
            F.cross_entropy(model(data.x, data.edge_index, data.batch), data.y).backward()
            opt.step()
    per_epoch = (time.process_time() - start) / epochs
    test_loader = DataLoader(test, batch_size=64)  # ClusterPooling goes dense
    acc, nodes = evaluate(model, test_loader)
    info = {"acc": acc, "epoch_s": per_epoch, "nodes": nodes,
            "pool_ms": pool_ms(model, next(iter(DataLoader(train[:64], batch_size=64))))}
    if isinstance(model.pool, ThresholdMergePool):
        info["threshold"] = model.pool.learnt_threshold()
        info["merge_ratio"] = merge_ratio(model.pool, model, test_loader)
    return info


def diagnose(graphs: list[Data], hidden: int) -> None:
    """Why the old default (cosine > 0.5) merged every digit into one node: quantiles of
    the neighbour cosine after GraphConv + ReLU, raw, centred per graph and through a
    random projection, at initialisation and after 5 epochs without a pool (seed 0)."""
    from torch_geometric.utils import scatter

    from pyg_grapheme.nn.merge_pool import edge_similarity

    train, test = split(graphs, 0)
    data = next(iter(DataLoader(test, batch_size=64)))
    q = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95])

    def show(model, tag):
        with torch.no_grad():
            h = F.relu(model.conv1(data.x, data.edge_index))
            mu = scatter(h, data.batch, 0, reduce="mean")[data.batch]
            proj = torch.nn.Linear(hidden, hidden, bias=False)
            for name, f in [("raw", h), ("centred per graph", h - mu), ("random projection",
                                                                          proj(h))]:
                s = edge_similarity(f, data.edge_index).quantile(q)
                print(f"| {tag} | {name} | " + " | ".join(f"{v:.3f}" for v in s) + " |")

    print("\n| model | features | 5% | 25% | 50% | 75% | 95% |\n|---|---|---|---|---|---|---|")
    torch.manual_seed(0)
    model = Classifier("none", hidden)
    show(model, "init")
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(5):
        for d in DataLoader(train, batch_size=64, shuffle=True):
            opt.zero_grad()
            F.cross_entropy(model(d.x, d.edge_index, d.batch), d.y).backward()
            opt.step()
    show(model, "5 epochs, no pool")


def fmt(values: list[float], digits: int = 3) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} +- {sd:.{digits}f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--pools", nargs="*", default=POOLS, choices=CHOICES)
    parser.add_argument("--reduce", default="mean",
                        help="ThresholdMergePool's feature reduction (mean, sum, max, attention)")
    parser.add_argument("--fixed", nargs="*", type=float, default=[],
                        help="frozen thresholds for extra ThresholdMergePool rows")
    parser.add_argument("--diagnose", action="store_true",
                        help="only print the neighbour-cosine quantiles (the old collapse)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    graphs = load_graphs()
    if args.diagnose:
        diagnose(graphs, args.hidden)
        return
    print(f"torch {torch.__version__}, threads = {torch.get_num_threads()}; digits: "
          f"{len(graphs)} images as 64-node 4-neighbour pixel graphs, {args.epochs} epochs, "
          f"seeds 0..{args.seeds - 1}, stratified 80/20, hidden {args.hidden}, "
          f"ThresholdMergePool reduce={args.reduce}")
    rows = [(p, None) for p in args.pools] + [("ThresholdMergePool", t) for t in args.fixed]
    results = {}
    for pool, fixed in rows:
        runs = [run(pool, graphs, s, args.epochs, args.hidden, fixed, args.reduce)
                for s in range(args.seeds)]
        results[(pool, fixed)] = runs
        r = runs[-1]
        print(f"  {pool} fixed={fixed}: acc {fmt([r['acc'] for r in runs])}, "
              f"{r['epoch_s']:.2f} s/epoch", flush=True)
    ref = results.get(("EdgePooling", None))
    ref_epoch = statistics.mean(r["epoch_s"] for r in ref) if ref else None
    ref_pool = statistics.mean(r["pool_ms"] for r in ref) if ref else None
    print("\n| pool | test acc (mean +- sd) | s / epoch | x EdgePooling speed (epoch) | "
          "pool fwd+bwd ms | x EdgePooling speed (pool) | nodes left / 64 | threshold | "
          "merge ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (pool, fixed), runs in results.items():
        epoch = statistics.mean(r["epoch_s"] for r in runs)
        pms = statistics.mean(r["pool_ms"] for r in runs)
        name = pool if fixed is None else f"{pool} (frozen at {fixed})"
        speed = f"{ref_epoch / epoch:.2f}" if ref_epoch else "-"
        pspeed = f"{ref_pool / pms:.1f}" if ref_pool and pms > 0 else "-"
        thr = fmt([r["threshold"] for r in runs]) if "threshold" in runs[0] else "-"
        ratio = fmt([r["merge_ratio"] for r in runs], 2) if "merge_ratio" in runs[0] else "-"
        print(f"| {name} | {fmt([r['acc'] for r in runs])} | {epoch:.2f} | {speed} | "
              f"{pms:.2f} | {pspeed} | {fmt([r['nodes'] for r in runs], 1)} | {thr} | "
              f"{ratio} |")


if __name__ == "__main__":
    main()
