"""ThresholdMergePool inside an ordinary PyG graph classifier, next to EdgePooling and
ClusterPooling (and no pooling) in the same model:

    GCNConv -> pool -> GCNConv -> global_mean_pool -> Linear

    python experiments/pool_classifier.py            # ~1 minute on one CPU thread

Synthetic task (3 classes, chance 1/3): undirected chains of 24-40 nodes whose nodes come
in runs of one of 4 colours (one-hot + noise); the class is the typical run length
(long runs of ~8, medium ~4, short ~2), with the colour mix random, so a mean over the
raw node features does not tell the classes apart. A pool that merges each run into one
node sees it directly. Seeds fixed; one torch thread.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader
from torch_geometric.nn import ClusterPooling, EdgePooling, GCNConv, global_mean_pool
from torch_geometric.utils import to_undirected

from pyg_grapheme.nn import ThresholdMergePool

RUN_LENGTH = {0: 8.0, 1: 4.0, 2: 2.0}


def make_graph(label: int, g: torch.Generator) -> Data:
    n = int(torch.randint(24, 41, (1,), generator=g))
    colours = []
    while len(colours) < n:
        length = max(1, int(torch.poisson(torch.tensor([RUN_LENGTH[label]]), generator=g)))
        colour = int(torch.randint(4, (1,), generator=g))
        if colours and colour == colours[-1]:
            colour = (colour + 1) % 4  # a new run has a new colour
        colours += [colour] * length
    colours = torch.tensor(colours[:n])
    x = F.one_hot(colours, 4).float()
    x = torch.cat([x, torch.zeros(n, 4)], dim=1) + 0.2 * torch.randn(n, 8, generator=g)
    row = torch.arange(n - 1)
    edge_index = to_undirected(torch.stack([row, row + 1]), num_nodes=n)
    return Data(x=x, edge_index=edge_index, y=torch.tensor([label]))


def make_dataset(num: int, seed: int) -> list[Data]:
    g = torch.Generator().manual_seed(seed)
    return [make_graph(k % 3, g) for k in range(num)]


class Classifier(torch.nn.Module):
    def __init__(self, pool: str, hidden: int = 32):
        super().__init__()
        self.pool_name = pool
        self.conv1 = GCNConv(8, hidden)
        self.conv2 = GCNConv(hidden, hidden)
        self.lin = torch.nn.Linear(hidden, 3)
        if pool == "ThresholdMergePool":
            self.pool = ThresholdMergePool(hidden)  # the defaults
        elif pool == "EdgePooling":
            self.pool = EdgePooling(hidden)
        elif pool == "ClusterPooling":
            self.pool = ClusterPooling(hidden)
        else:
            self.pool = None

    def forward(self, x, edge_index, batch):
        x = F.relu(self.conv1(x, edge_index))
        edge_weight = node_weight = None
        if self.pool is not None:  # all three unpack alike
            x, edge_index, batch, info = self.pool(x, edge_index, batch)
            if isinstance(self.pool, ThresholdMergePool):
                edge_weight, node_weight = info.edge_weight, info.node_weight
        self.last_num_nodes = x.size(0)
        x = F.relu(self.conv2(x, edge_index, edge_weight))
        if node_weight is not None:
            # masses are 1 in value: the same mean, plus a gradient to the threshold
            x = x * node_weight.unsqueeze(-1)
        return self.lin(global_mean_pool(x, batch))


def accuracy(model, loader) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for data in loader:
            pred = model(data.x, data.edge_index, data.batch).argmax(-1)
            correct += int((pred == data.y).sum())
            total += data.num_graphs
    return correct / total


def run(pool: str, train, test, epochs: int, seed: int) -> dict:
    torch.manual_seed(seed)
    model = Classifier(pool)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    loader = DataLoader(train, batch_size=32, shuffle=True)
    start = time.process_time()
    for _ in range(epochs):
        model.train()
        for data in loader:
            opt.zero_grad()
            loss = F.cross_entropy(model(data.x, data.edge_index, data.batch), data.y)
            loss.backward()
            opt.step()
    seconds = time.process_time() - start
    test_loader = DataLoader(test, batch_size=64)
    acc = accuracy(model, test_loader)
    sizes = []
    with torch.no_grad():
        for d in test_loader:
            model(d.x, d.edge_index, d.batch)
            sizes.append(model.last_num_nodes / d.num_nodes)
    info = {"pool": pool, "acc": acc, "train_acc": accuracy(model, loader),
            "seconds": seconds, "kept": sum(sizes) / len(sizes)}
    if isinstance(model.pool, ThresholdMergePool):
        info["threshold"] = model.pool.learnt_threshold()
    return info


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--train", type=int, default=600)
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, threads = {torch.get_num_threads()}; "
          f"{args.train} train / {args.test} test graphs, {args.epochs} epochs, chance = 0.333")
    train = make_dataset(args.train, args.seed)
    test = make_dataset(args.test, args.seed + 1)
    print("\n| pool | test acc | train acc | nodes kept | train CPU s | notes |")
    print("|---|---|---|---|---|---|")
    for pool in ["ThresholdMergePool", "EdgePooling", "ClusterPooling", "none"]:
        r = run(pool, train, test, args.epochs, args.seed)
        note = f"learned threshold {r['threshold']:.3f} (from 0.5)" if "threshold" in r else ""
        print(f"| {r['pool']} | {r['acc']:.3f} | {r['train_acc']:.3f} | {r['kept']:.2f} | "
              f"{r['seconds']:.1f} | {note} |", flush=True)


if __name__ == "__main__":
    main()
