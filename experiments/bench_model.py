"""Forward+backward speed of GraphTransformNet + its training loss (segmentation_nll),
and of the edge head of graph-shaped answers (EdgeHead against ByteHead).

    python experiments/bench_model.py [--threads 1] [--repeats 5] [--tables model sizes edge]
        [--out experiments/results/bench_model.json]

Table 1: graphs/s for batches of 64 QA-sized graphs (20-60 graphemes, answers 1-8),
forward only, forward+backward (the training step without the optimizer), and a whole
Adam step, at canvas sizes (``max_answer_length``, the cap on the answer's length)
8 .. 64: how the cost grows with the cap, for each layer form (``block``). Table 2: one
graph of n = 100 .. 4,000 nodes (canvas 32): seconds per forward+backward and
microseconds per node (the encoder's self-attention is quadratic in n). Table 3: the
edge head (:class:`~pyg_grapheme.nn.EdgeHead`, every ordered pair of an output graph's
``m`` nodes, O(m^2) per graph) against the byte head (:class:`~pyg_grapheme.nn.ByteHead`,
O(m)) on the same nodes, one row per canvas size ``m``: 64 graphs, the model's hidden
size, forward+backward, and their ratio (measured back to back in the same run); the
ratio grows linearly in ``m``.
The torch thread count is fixed and printed (oversubscription on a loaded machine makes
small ops far slower). ``--out FILE.json`` writes the measured rows (the README's speed
table is rendered from it by ``experiments/readme_tables.py``).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import string
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch_geometric.data import Batch

from pyg_grapheme import text_to_graph
from pyg_grapheme.loss import segmentation_nll
from pyg_grapheme.nn import ByteHead, EdgeHead, GraphTransformNet


def random_text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.ascii_lowercase + " ") for _ in range(n))


def batch_of(rng: random.Random, sizes: list[int], answer: list[int]):
    inputs = Batch.from_data_list([text_to_graph(random_text(rng, n)) for n in sizes])
    targets = Batch.from_data_list([text_to_graph(random_text(rng, m)) for m in answer])
    return inputs, targets


def loss_of(model, inputs, targets):
    pred = model(inputs)
    return segmentation_nll(pred.canvas_log_probs, pred.canvas_batch, pred.merge_logit,
                            targets.x, targets.batch, targets.num_graphs)


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000, 4000])
    ap.add_argument("--canvas", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--blocks", nargs="+", default=["gps", "pre_ln"],
                    help="GraphTransformNet layer forms to time in table 1")
    ap.add_argument("--tables", nargs="+", default=["model", "sizes", "edge"],
                    choices=["model", "sizes", "edge"], help="which tables to print")
    ap.add_argument("--out", type=Path, help="write the measured rows as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    rng = random.Random(0)
    inputs, targets = batch_of(rng, [rng.randint(20, 60) for _ in range(64)],
                               [rng.randint(1, 8) for _ in range(64)])
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"median of {args.repeats}")
    tables = {}
    if "model" in args.tables:
        tables["model"] = model_table(args, inputs, targets)
    if "sizes" in args.tables:
        tables["sizes"] = size_table(args, rng)
    if "edge" in args.tables:
        tables["edge"] = edge_table(args)
    result = {"threads": torch.get_num_threads(), "cpus": os.cpu_count(),
              "repeats": args.repeats,
              "torch": torch.__version__, "load": load, **tables}
    if args.out:
        from readme_tables import write_result  # experiments/ is the script's path

        write_result(args.out, "bench_model", "bench_model.py", result, argv)
        print(f"results written to {args.out}")
    return result


def edge_table(args, graphs: int = 64) -> list[dict]:
    """EdgeHead (all ordered pairs, O(m^2) per graph) against ByteHead (O(m)) per canvas."""
    hidden = GraphTransformNet().hidden
    torch.manual_seed(0)
    edge, byte = EdgeHead(hidden), ByteHead(hidden)
    print(f"\n{graphs} output graphs of m nodes, hidden {hidden}, forward+backward")
    print("| canvas m | pairs | EdgeHead ms | ByteHead ms | ratio | EdgeHead us/pair |")
    print("|---|---|---|---|---|---|")
    rows = []
    for m in args.canvas:
        x = torch.randn(graphs * m, hidden, requires_grad=True)
        batch = torch.arange(graphs).repeat_interleave(m)
        pos = torch.arange(m).repeat(graphs)

        def run_edge(x=x, batch=batch, pos=pos):
            edge(x, batch, pos).edge_weight.sum().backward()

        def run_byte(x=x):
            byte(x).sum().backward()

        te, tb = timed(run_edge, args.repeats), timed(run_byte, args.repeats)
        pairs = graphs * m * (m - 1)
        print(f"| {m} | {pairs:,} | {1e3 * te:.1f} | {1e3 * tb:.1f} | {te / tb:.2f} | "
              f"{1e6 * te / pairs:.3f} |")
        rows.append({"canvas": m, "pairs": pairs, "edge_s": te, "byte_s": tb})
    return rows


def model_table(args, inputs, targets) -> list[dict]:
    print("\n| layers | canvas (max_answer_length) | parameters | forward graphs/s | "
          "forward+backward graphs/s | Adam step graphs/s |")
    print("|---|---|---|---|---|---|")
    rows = []
    for block, k in ((b, k) for k in args.canvas for b in args.blocks):
        torch.manual_seed(0)
        model = GraphTransformNet(max_answer_length=k, block=block)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        params = sum(p.numel() for p in model.parameters())

        def forward(model=model):
            with torch.no_grad():
                loss_of(model, inputs, targets)

        def forward_backward(model=model):
            model.zero_grad()
            loss_of(model, inputs, targets).backward()

        def step(opt=opt, fb=forward_backward):
            fb()
            opt.step()

        rates = [64 / timed(fn, args.repeats) for fn in (forward, forward_backward, step)]
        print(f"| {block} | {k} | {params:,} | " + " | ".join(f"{r:.0f}" for r in rates)
              + " |")
        rows.append({"block": block, "canvas": k, "parameters": params, "forward": rates[0],
                     "forward_backward": rates[1], "step": rates[2]})
    return rows


def size_table(args, rng) -> list[dict]:
    torch.manual_seed(0)
    model = GraphTransformNet(max_answer_length=32)
    print("\n| nodes per graph | s forward+backward | us / node |")
    print("|---|---|---|")
    rows = []
    for n in args.sizes:
        inp, tgt = batch_of(rng, [n], [8])

        def fb(inp=inp, tgt=tgt):
            model.zero_grad()
            loss_of(model, inp, tgt).backward()

        t = timed(fb, max(2, args.repeats // 2))
        print(f"| {n} | {t:.3f} | {1e6 * t / n:.1f} |")
        rows.append({"nodes": n, "forward_backward_s": t})
    return rows


if __name__ == "__main__":
    main()
