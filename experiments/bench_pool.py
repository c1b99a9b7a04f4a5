"""Forward+backward speed of ThresholdMergePool against PyG's pooling layers.

    python experiments/bench_pool.py               # 64 chains x 30 nodes, 64-dim (the issue)
    python experiments/bench_pool.py --scaling     # total nodes 1k .. 1M, batched chains
    python experiments/bench_pool.py --components  # connected components: torch vs scipy

``--out FILE.json`` (the default table only) writes the medians, for the README's speed
table (``experiments/readme_tables.py``).

One torch thread (printed; more threads oversubscribe a loaded 2-core machine), the
layers timed interleaved (round-robin, rotated start) and reported as medians of the
process CPU time (``time.process_time``: robust to other processes on a shared machine;
page faults count) next to the wall time. ClusterPooling is timed in its own rounds: its
dense N x N matrices evict everything from the caches and slowed the layer timed after it.
Chains are directed (i -> i+1, the text graph of this package) with features in runs
of similar vectors, so that the threshold merges about a third of the edges.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch_geometric.nn import ClusterPooling, EdgePooling, SAGPooling, TopKPooling

from pyg_grapheme.nn import ThresholdMergePool, connected_components


def make_chains(num_graphs: int, length: int, dim: int, seed: int = 0):
    """Batched directed chains; runs of 1-5 nodes share a feature vector up to noise."""
    g = torch.Generator().manual_seed(seed)
    n = num_graphs * length
    new_run = torch.rand(n, generator=g) < 0.4
    new_run[::length] = True
    run = new_run.long().cumsum(0) - 1
    centers = torch.randn(int(run[-1]) + 1, dim, generator=g)
    x = centers[run] + 0.15 * torch.randn(n, dim, generator=g)
    src = torch.arange(n).view(num_graphs, length)[:, :-1].reshape(-1)
    edge_index = torch.stack([src, src + 1])
    batch = torch.arange(num_graphs).repeat_interleave(length)
    return x, edge_index, batch


def ours(dim: int, **kw):
    # the absolute cosine rule these tables were taken with; the per-graph normalisation
    # (the default since) is timed on real data by experiments/pool_digits.py
    kw.setdefault("score_norm", "none")
    pool = ThresholdMergePool(dim, threshold=0.9, **kw)

    def step(x, ei, batch):
        out = pool(x, ei, batch)
        (out.x.sum() + out.node_weight.sum() + out.edge_weight.sum()).backward()
        return out.x.size(0)

    return step


def pyg(layer):
    def step(x, ei, batch):
        out = layer(x, ei, batch=batch)
        out[0].sum().backward()
        return out[0].size(0)

    return step


def layers(dim: int) -> dict:
    return {
        "ThresholdMergePool": ours(dim),
        "TopKPooling(0.5)": pyg(TopKPooling(dim, ratio=0.5)),
        "SAGPooling(0.5)": pyg(SAGPooling(dim, ratio=0.5)),
        "EdgePooling": pyg(EdgePooling(dim)),
        "ClusterPooling": pyg(ClusterPooling(dim)),
    }


def time_once(step, x, ei, batch) -> tuple[float, float]:
    x = x.detach().requires_grad_()
    c, w = time.process_time(), time.perf_counter()
    step(x, ei, batch)
    return time.process_time() - c, time.perf_counter() - w


def interleaved(steps: dict, data, repeats: int, warmup: int = 2) -> dict:
    """{name: (median CPU s, median wall s)}."""
    names = list(steps)
    for _ in range(warmup):
        for name in names:
            time_once(steps[name], *data)
    times = {name: [] for name in names}
    for r in range(repeats):
        for k in range(len(names)):
            name = names[(r + k) % len(names)]
            times[name].append(time_once(steps[name], *data))
    return {
        name: (statistics.median(c for c, _ in t), statistics.median(w for _, w in t))
        for name, t in times.items()
    }


def bench_issue(repeats: int) -> dict:
    dim = 64
    data = make_chains(64, 30, dim)
    steps = layers(dim)
    slow = {"ClusterPooling": steps.pop("ClusterPooling")}
    with torch.no_grad():
        out = ThresholdMergePool(dim, threshold=0.9, score_norm="none")(*data)
    print(f"64 chains x 30 nodes, {dim}-dim features (N=1920, E=1856); ThresholdMergePool "
          f"keeps {out.x.size(0)} of 1920 nodes")
    med = interleaved(steps, data, repeats)
    med.update(interleaved(slow, data, max(3, repeats // 10), warmup=1))
    base = med["ThresholdMergePool"]
    print("\n| layer | CPU ms fwd+bwd | wall ms | CPU time relative to ThresholdMergePool |")
    print("|---|---|---|---|")
    for name, (c, w) in sorted(med.items(), key=lambda kv: kv[1][0]):
        print(f"| {name} | {1e3 * c:.2f} | {1e3 * w:.2f} | {c / base[0]:.2f}x |")
    top = med["TopKPooling(0.5)"]
    edge = med["EdgePooling"]
    print(f"\nEdgePooling / ours = {edge[0] / base[0]:.1f}x CPU, {edge[1] / base[1]:.1f}x wall "
          f"(target >= 10x); ours / TopKPooling = {base[0] / top[0]:.2f}x CPU, "
          f"{base[1] / top[1]:.2f}x wall (target <= 2x)")
    return {"graphs": 64, "length": 30, "dim": dim, "kept_nodes": out.x.size(0),
            "repeats": repeats,
            "layers": {name: {"cpu_s": c, "wall_s": w} for name, (c, w) in med.items()}}


def bench_scaling(sizes: list[int], repeats: int, budget_s: float):
    dim = 64
    print(f"batched chains of 30 nodes, {dim}-dim; CPU (wall) us per node, fwd+bwd; a layer "
          f"is skipped once its predicted wall time exceeds {budget_s:.0f} s")
    print("\n| total nodes | " + " | ".join(
        f"{n}" for n in ["ThresholdMergePool", "TopKPooling", "EdgePooling",
                                 "ClusterPooling"]) + " |")
    print("|---|---|---|---|---|")
    last: dict[str, tuple[int, float]] = {}
    notes = []
    per_node_ours = {}
    for n in sizes:
        data = make_chains(max(n // 30, 1), 30, dim, seed=1)
        num = data[0].size(0)
        steps = {
            "ThresholdMergePool": ours(dim),
            "TopKPooling": pyg(TopKPooling(dim, ratio=0.5)),
            "EdgePooling": pyg(EdgePooling(dim)),
            "ClusterPooling": pyg(ClusterPooling(dim)),
        }
        # Time-box: predict from the last size (linear, ClusterPooling quadratic).
        for name in list(steps):
            if name == "ClusterPooling" and name not in last and num > 3_000:
                notes.append(f"ClusterPooling skipped at {num} nodes: not measured on a "
                             "smaller size first (dense N x N: 160 s at 10k nodes once)")
                del steps[name]
            elif name in last:
                n0, t0 = last[name]
                power = 2 if name == "ClusterPooling" else 1
                pred = t0 * (num / n0) ** power
                if pred > budget_s:
                    notes.append(f"{name} skipped at {num} nodes: predicted {pred:.1f} s "
                                 f"(from {t0:.2f} s at {n0})")
                    del steps[name]
        reps = repeats if num <= 100_000 else max(3, repeats // 4)
        slow = {k: steps.pop(k) for k in ["ClusterPooling"] if k in steps}
        med = interleaved(steps, data, reps, warmup=1)
        if slow:
            med.update(interleaved(slow, data, 3, warmup=1))
        for name, (_, t) in med.items():
            last[name] = (num, t)
        per_node_ours[num] = med["ThresholdMergePool"][0] / num
        cells = [f"{1e6 * med[k][0] / num:.2f} ({1e6 * med[k][1] / num:.2f})" if k in med
                 else "skipped" for k in
                 ["ThresholdMergePool", "TopKPooling", "EdgePooling", "ClusterPooling"]]
        print(f"| {num} | " + " | ".join(cells) + " |", flush=True)
    for note in notes:
        print(note)
    small = [k for k in per_node_ours if k >= 9_990]
    if small and max(per_node_ours) >= 999_990:
        ref = min(small)
        big = max(per_node_ours)
        print(f"ThresholdMergePool CPU time per node at {big} / at {ref}: "
              f"{per_node_ours[big] / per_node_ours[ref]:.2f}x (target <= 1.5x)")


def bench_components(repeats: int):
    print("connected components, CPU ms (median, interleaved): kept edges of a chain (70% "
          "kept) in reading order or with shuffled node ids, and a random graph with E = N")
    print("\n| nodes | graph | torch | scipy | faster |")
    print("|---|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    for n in [500, 1_000, 2_000, 5_000, 10_000, 30_000, 100_000, 1_000_000]:
        for kind in ["chain", "shuffled chain", "random"]:
            if kind == "random":
                ei = torch.randint(n, (2, n), generator=g)
            else:
                row = torch.arange(n - 1)
                row = row[torch.rand(n - 1, generator=g) < 0.7]
                ei = torch.stack([row, row + 1])
                if kind == "shuffled chain":
                    ei = torch.randperm(n, generator=g)[ei]
            t = {"torch": [], "scipy": []}
            for r in range(repeats if n < 100_000 else 5):
                for m in (["torch", "scipy"] if r % 2 else ["scipy", "torch"]):
                    t0 = time.process_time()
                    connected_components(ei, n, method=m)
                    t[m].append(time.process_time() - t0)
            a, b = statistics.median(t["torch"]), statistics.median(t["scipy"])
            print(f"| {n} | {kind} | {1e3 * a:.3f} | {1e3 * b:.3f} | "
                  f"{'torch' if a < b else 'scipy'} |", flush=True)


def main(argv: Sequence[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--scaling", action="store_true")
    parser.add_argument("--sizes", type=int, nargs="+",
                        default=[1_000, 10_000, 100_000, 1_000_000])
    parser.add_argument("--budget", type=float, default=5.0,
                        help="seconds; skip a layer whose predicted time exceeds this")
    parser.add_argument("--components", action="store_true")
    parser.add_argument("--out", type=Path, help="write the default table's medians as JSON")
    args = parser.parse_args(argv)
    if args.out and (args.scaling or args.components):
        parser.error("--out writes the default table only (not --scaling, --components)")
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads = {torch.get_num_threads()}")
    if args.components:
        bench_components(args.repeats)
    elif args.scaling:
        bench_scaling(args.sizes, max(args.repeats // 3, 3), args.budget)
    else:
        result = {"threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                  "torch": torch.__version__, "load": load, **bench_issue(args.repeats)}
        if args.out:
            from readme_tables import write_result  # experiments/ is the script's path

            write_result(args.out, "bench_pool", "bench_pool.py", result, argv)
            print(f"results written to {args.out}")
        return result
    return None


if __name__ == "__main__":
    main()
