"""Forward+backward speed of GraphTransformNet + structural_loss (issues 5 and 6).

    python experiments/bench_model.py [--threads 1] [--repeats 5]

Table 1: graphs/s for batches of 64 QA-sized graphs (20-60 graphemes, answers 1-8),
forward only, forward+backward (the training step without the optimizer), and a whole
Adam step. Table 2: one graph of n = 100 .. 10,000 nodes (answer n/10): seconds per
forward+backward and microseconds per node; growth is linear when the last column is flat.
The torch thread count is fixed and printed (oversubscription on a loaded machine makes
small ops far slower).
"""

from __future__ import annotations

import argparse
import random
import statistics
import string
import time

import torch
from torch_geometric.data import Batch

from pyg_grapheme import text_to_graph
from pyg_grapheme.loss import structural_loss
from pyg_grapheme.nn import GraphTransformNet, one_hot_bytes


def random_text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.ascii_lowercase + " ") for _ in range(n))


def batch_of(rng: random.Random, sizes: list[int], answer: list[int]):
    inputs = Batch.from_data_list([text_to_graph(random_text(rng, n)) for n in sizes])
    targets = Batch.from_data_list([text_to_graph(random_text(rng, m)) for m in answer])
    return inputs, one_hot_bytes(targets)


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000, 3000, 10000])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = random.Random(0)
    model = GraphTransformNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    params = sum(p.numel() for p in model.parameters())
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"GraphTransformNet {params:,} parameters, median of {args.repeats}")

    inputs, targets = batch_of(rng, [rng.randint(20, 60) for _ in range(64)],
                               [rng.randint(1, 8) for _ in range(64)])

    def forward():
        with torch.no_grad():
            structural_loss(model(inputs), targets)

    def forward_backward():
        model.zero_grad()
        structural_loss(model(inputs), targets).backward()

    def step():
        forward_backward()
        opt.step()

    print("\n| batch of 64 QA graphs (20-60 nodes) | s / batch | graphs / s |")
    print("|---|---|---|")
    for name, fn in [("forward", forward), ("forward + backward", forward_backward),
                     ("Adam step", step)]:
        t = timed(fn, args.repeats)
        print(f"| {name} | {t:.3f} | {64 / t:.0f} |")

    print("\n| nodes per graph | s forward+backward | us / node |")
    print("|---|---|---|")
    for n in args.sizes:
        inp, tgt = batch_of(rng, [n], [max(n // 10, 1)])

        def fb(inp=inp, tgt=tgt):
            model.zero_grad()
            structural_loss(model(inp), tgt).backward()

        t = timed(fb, max(2, args.repeats // 2))
        print(f"| {n} | {t:.3f} | {1e6 * t / n:.1f} |")


if __name__ == "__main__":
    main()
