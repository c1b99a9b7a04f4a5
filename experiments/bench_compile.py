"""One training step of GraphTransformNet, eager against ``torch.compile`` (inductor), on
the batch of ``bench_model.py``'s first table (64 QA-sized graphs), measured side by side
in the same run.

    python experiments/bench_compile.py [--threads 1] [--repeats 5] [--canvas 32]
        [--blocks gps pre_ln] [--backend inductor]

A step is forward, ``segmentation_nll`` (eager: only the model is compiled), backward and
an Adam step. The compiled model keeps one graph break, the pool's connected components
(tests/nn/test_compile_transform_net.py): the step runs two compiled graphs with the
components, the size reads and the output ``Batch`` eager around them. The first compiled
step, which includes compilation, is reported apart; the medians are of the steps after
it on the same batch (static shapes: no recompilation). Prints graphs/s and the ratio
compiled / eager per layer form.
"""

from __future__ import annotations

import argparse
import random
import time

import torch
from bench_model import batch_of, loss_of, timed  # next to this file

from pyg_grapheme.nn import GraphTransformNet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--canvas", type=int, default=32)
    ap.add_argument("--blocks", nargs="+", default=["gps", "pre_ln"])
    ap.add_argument("--backend", default="inductor")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rng = random.Random(0)
    graphs = 64
    inputs, targets = batch_of(rng, [rng.randint(20, 60) for _ in range(graphs)],
                               [rng.randint(1, 8) for _ in range(graphs)])
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, backend "
          f"{args.backend}, canvas {args.canvas}, {graphs} graphs, median of {args.repeats}")
    print("\n| layers | eager step graphs/s | compiled step graphs/s | compiled / eager | "
          "first compiled step s |")
    print("|---|---|---|---|---|")
    for block in args.blocks:
        torch.manual_seed(0)
        eager = GraphTransformNet(max_answer_length=args.canvas, block=block)
        torch.manual_seed(0)
        twin = GraphTransformNet(max_answer_length=args.canvas, block=block)
        compiled = torch.compile(twin, backend=args.backend)

        def step(model, opt):
            opt.zero_grad()
            loss_of(model, inputs, targets).backward()
            opt.step()

        opt_e = torch.optim.Adam(eager.parameters(), lr=1e-3)
        opt_c = torch.optim.Adam(twin.parameters(), lr=1e-3)
        torch._dynamo.reset()
        t0 = time.perf_counter()
        step(compiled, opt_c)
        first = time.perf_counter() - t0
        te = timed(lambda m=eager, o=opt_e: step(m, o), args.repeats)
        tc = timed(lambda m=compiled, o=opt_c: step(m, o), args.repeats)
        print(f"| {block} | {graphs / te:.0f} | {graphs / tc:.0f} | {te / tc:.2f} | "
              f"{first:.0f} |")


if __name__ == "__main__":
    main()
