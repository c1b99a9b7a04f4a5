"""How faithfully does the structural loss rank pairs of graphs by graph edit distance?

Pairs of random labelled DAGs (5-8 nodes, alphabet 4, edge i -> j for i < j with
probability 0.3): half unrelated, half a graph and its copy after 1-4 random edits
(relabel, insert/delete node, insert/delete edge; the copy stays a DAG). Exact GED with
unit costs from ``networkx.graph_edit_distance`` (node_match on the label; an edited
pair's edit script bounds its GED from above and prunes the search; a per-pair timeout
marks the few unrelated pairs whose search did not finish, reported and excluded).

Reports Spearman rho and Kendall tau (scipy.stats) of the loss against GED over all
pairs and within the edited pairs, in the GED setting (alpha=1, beta=1, gamma=0, one-hot
labels) and with the defaults, plus milliseconds per pair (the whole set in one batch).

    .venv/bin/python experiments/ged_faithfulness.py --pairs 200 --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

import networkx as nx
import torch
from scipy import stats
from torch_geometric.data import Batch, Data

from pyg_grapheme.loss import structural_loss

ALPHABET = 4


def random_dag(rng: random.Random, n: int, p: float = 0.3) -> nx.DiGraph:
    """Random labelled DAG: nodes 0..n-1 in topological order, edge i->j (i<j) w.p. p."""
    g = nx.DiGraph()
    for i in range(n):
        g.add_node(i, label=rng.randrange(ALPHABET))
    for i in range(n):
        for j in range(i + 1, n):
            if rng.random() < p:
                g.add_edge(i, j)
    return g


def _relabel_in_order(g: nx.DiGraph, order: list[int]) -> nx.DiGraph:
    return nx.relabel_nodes(g, {v: k for k, v in enumerate(order)})


def edit(rng: random.Random, g: nx.DiGraph, k: int, p: float = 0.3) -> tuple[nx.DiGraph, int]:
    """Apply ``k`` random edits; returns the copy and the unit cost of the edit script
    (an upper bound on GED: deleting a node also deletes its edges)."""
    h = g.copy()
    order = list(range(h.number_of_nodes()))  # topological order of h's nodes
    cost = 0
    for _ in range(k):
        ops = ["relabel", "add_node", "add_edge"]
        if h.number_of_nodes() > 1:
            ops.append("del_node")
        if h.number_of_edges():
            ops.append("del_edge")
        op = rng.choice(ops)
        if op == "relabel":
            v = rng.choice(order)
            h.nodes[v]["label"] = (h.nodes[v]["label"] + rng.randrange(1, ALPHABET)) % ALPHABET
            cost += 1
        elif op == "add_node":
            v = max(h.nodes) + 1 if h.number_of_nodes() else 0
            pos = rng.randrange(len(order) + 1)
            h.add_node(v, label=rng.randrange(ALPHABET))
            order.insert(pos, v)
            cost += 1
            for u in order[:pos]:
                if rng.random() < p:
                    h.add_edge(u, v)
                    cost += 1
            for w in order[pos + 1 :]:
                if rng.random() < p:
                    h.add_edge(v, w)
                    cost += 1
        elif op == "del_node":
            v = rng.choice(order)
            cost += 1 + h.degree(v)
            h.remove_node(v)
            order.remove(v)
        elif op == "add_edge":
            free = [
                (order[i], order[j])
                for i in range(len(order))
                for j in range(i + 1, len(order))
                if not h.has_edge(order[i], order[j])
            ]
            if free:
                h.add_edge(*rng.choice(free))
                cost += 1
        else:
            h.remove_edge(*rng.choice(list(h.edges)))
            cost += 1
    return _relabel_in_order(h, order), cost


@dataclass
class Pair:
    g: nx.DiGraph
    h: nx.DiGraph
    edited: bool
    bound: int | None


def make_pairs(n_pairs: int, seed: int, sizes: tuple[int, int] = (5, 8)) -> list[Pair]:
    """Even-numbered pairs unrelated, odd-numbered a graph and its edited copy."""
    rng = random.Random(seed)
    pairs = []
    for k in range(n_pairs):
        g = random_dag(rng, rng.randint(*sizes))
        if k % 2 == 0:
            pairs.append(Pair(g, random_dag(rng, rng.randint(*sizes)), False, None))
        else:
            h, cost = edit(rng, g, rng.randint(1, 4))
            pairs.append(Pair(g, h, True, cost))
    return pairs


def _same_label(u: dict, v: dict) -> bool:
    return u["label"] == v["label"]


def exact_ged(pair: Pair, timeout: float) -> tuple[float, bool]:
    """(GED, exact?) with unit costs; ``exact`` is False if the search timed out."""
    t0 = time.perf_counter()
    d = nx.graph_edit_distance(
        pair.g, pair.h, node_match=_same_label, upper_bound=pair.bound, timeout=timeout
    )
    exact = time.perf_counter() - t0 < timeout
    if d is None:  # cannot happen with a valid bound; keep the bound then
        return float(pair.bound), False
    return float(d), exact


def to_data(g: nx.DiGraph) -> Data:
    n = g.number_of_nodes()
    labels = torch.tensor([g.nodes[v]["label"] for v in range(n)], dtype=torch.long)
    edges = torch.tensor(sorted(g.edges), dtype=torch.long).t().reshape(2, -1)
    x = torch.nn.functional.one_hot(labels, ALPHABET).float()
    return Data(x=x, edge_index=edges, num_nodes=n)


def batches(pairs: Sequence[Pair]) -> tuple[Batch, Batch]:
    return (
        Batch.from_data_list([to_data(p.g) for p in pairs]),
        Batch.from_data_list([to_data(p.h) for p in pairs]),
    )


def load_or_compute_ged(
    pairs: Sequence[Pair], timeout: float, cache: str | None, seed: int
) -> list[tuple[float, bool]]:
    key = f"seed{seed}-n{len(pairs)}-t{timeout}"
    if cache and os.path.exists(cache):
        with open(cache) as fh:
            stored = json.load(fh)
        if key in stored:
            return [tuple(v) for v in stored[key]]
    out = [exact_ged(p, timeout) for p in pairs]
    if cache:
        stored = {}
        if os.path.exists(cache):
            with open(cache) as fh:
                stored = json.load(fh)
        stored[key] = out
        # Atomic: write a temporary file beside the cache, then rename over it.
        d = os.path.dirname(os.path.abspath(cache))
        fd, tmp = tempfile.mkstemp(dir=d, suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump(stored, fh)
        os.replace(tmp, cache)
    return out


def rank_scores(loss: Sequence[float], ged: Sequence[float], mask: Sequence[bool]) -> dict:
    lv = [x for x, k in zip(loss, mask, strict=True) if k]
    gv = [x for x, k in zip(ged, mask, strict=True) if k]
    return {
        "rho": float(stats.spearmanr(lv, gv).statistic),
        "tau": float(stats.kendalltau(lv, gv).statistic),
        "n": len(lv),
    }


def evaluate(
    pairs: Sequence[Pair],
    ged: Sequence[float],
    keep: Sequence[bool],
    repeats: int = 3,
    **loss_kwargs,
) -> dict:
    """Loss for every pair (one batch), rank correlations and ms per pair."""
    pb, tb = batches(pairs)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        loss = structural_loss(pb, tb, reduction="none", **loss_kwargs)
        times.append(time.perf_counter() - t0)
    loss = loss.tolist()
    edited = [p.edited and k for p, k in zip(pairs, keep, strict=True)]
    return {
        "all": rank_scores(loss, ged, keep),
        "edited": rank_scores(loss, ged, edited),
        "ms_per_pair": 1e3 * statistics.median(times) / len(pairs),
        "loss": loss,
    }


SETTINGS = {
    "GED setting (alpha=1, beta=1, gamma=0)": dict(alpha=1.0, beta=1.0, gamma=0.0),
    "defaults (alpha=1, beta=0.5, gamma=2)": dict(),
    "node only (alpha=1, beta=0, gamma=0)": dict(alpha=1.0, beta=0.0, gamma=0.0),
}


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=60.0, help="GED search limit per pair (s)")
    ap.add_argument("--cache", default=None, help="JSON file for GED values (written atomically)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reg", type=float, default=None, help="override reg")
    ap.add_argument("--outer-iter", type=int, default=None, help="override outer_iter")
    ap.add_argument("--reg-init", type=float, default=None, help="override reg_init (0 = off)")
    ap.add_argument("--inner-iter", type=int, default=None, help="override inner_iter")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}")
    pairs = make_pairs(args.pairs, args.seed)
    t0 = time.perf_counter()
    res = load_or_compute_ged(pairs, args.timeout, args.cache, args.seed)
    ged = [d for d, _ in res]
    keep = [e for _, e in res]
    print(
        f"{len(pairs)} pairs ({sum(p.edited for p in pairs)} edited), exact GED for "
        f"{sum(keep)} ({time.perf_counter() - t0:.0f} s); GED range {min(ged):.0f}..{max(ged):.0f}"
    )
    over = {}
    if args.reg is not None:
        over["reg"] = args.reg
    if args.outer_iter is not None:
        over["outer_iter"] = args.outer_iter
    if args.reg_init is not None:
        over["reg_init"] = args.reg_init or None
    if args.inner_iter is not None:
        over["inner_iter"] = args.inner_iter
    print(f"overrides: {over or 'none'}")
    print()
    print("| setting | rho all | tau all | rho edited | tau edited | ms/pair |")
    print("|---|---|---|---|---|---|")
    for name, kw in SETTINGS.items():
        r = evaluate(pairs, ged, keep, **{**kw, **over})
        print(
            f"| {name} | {r['all']['rho']:.3f} | {r['all']['tau']:.3f} | "
            f"{r['edited']['rho']:.3f} | {r['edited']['tau']:.3f} | {r['ms_per_pair']:.2f} |"
        )
    n_edited = sum(p.edited and k for p, k in zip(pairs, keep, strict=True))
    print(f"\n(all: n={sum(keep)}; edited: n={n_edited})")


if __name__ == "__main__":
    main()
