"""Cost of EdgeHead (all ordered pairs per graph, O(m^2)) against ByteHead (per node, O(m))
on the same pooled nodes, forward + backward, one CPU thread.

    OMP_NUM_THREADS=1 python experiments/bench_edge_head.py

Prints, per output-graph size m (B graphs of m nodes, hidden 64): the pairs scored, the
median time of EdgeHead and of ByteHead over the same nodes, and their ratio (measured in
the same run, back to back).
"""

from __future__ import annotations

import time

import torch

from pyg_grapheme.nn.edge_head import EdgeHead
from pyg_grapheme.nn.head import ByteHead


def _time(fn, reps: int = 7) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    hidden, B = 64, 64
    edge, byte = EdgeHead(hidden), ByteHead(hidden)
    print(f"B={B} graphs, hidden={hidden}, forward+backward, median of 7, 1 thread")
    print(f"{'m':>5} {'pairs':>9} {'EdgeHead ms':>12} {'ByteHead ms':>12} {'ratio':>7} "
          f"{'us/pair':>8}")
    for m in (5, 13, 32, 64):
        x = torch.randn(B * m, hidden, requires_grad=True)
        batch = torch.arange(B).repeat_interleave(m)
        pos = torch.arange(m).repeat(B)

        def run_edge(x=x, batch=batch, pos=pos):
            edge(x, batch, pos).edge_weight.sum().backward()

        def run_byte(x=x):
            byte(x).sum().backward()

        te, tb = _time(run_edge), _time(run_byte)
        pairs = B * m * (m - 1)
        print(f"{m:>5} {pairs:>9} {te * 1e3:>12.2f} {tb * 1e3:>12.2f} {te / tb:>7.2f} "
              f"{te / pairs * 1e6:>8.3f}")


if __name__ == "__main__":
    main()
