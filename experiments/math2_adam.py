"""Issue 11, math2: what Adam's implementation costs per step on CPU, for each model.

The harness builds ``torch.optim.Adam(params, lr=1e-3)`` for all three models; on CPU that
is the per-tensor for-loop (``foreach`` defaults on only for CUDA tensors). This times
``step()`` (random gradients, one thread, the median of ``--reps`` after warm-up) for the
loop, ``foreach=True`` and ``fused=True`` on the graph model's parameters (default and
the factorized head at 3 encoder layers) and the parameter-matched GRU's, with the ratio
against the loop measured in the same run.

    python experiments/math2_adam.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import seq2seq_models as sm  # noqa: E402

from pyg_grapheme.nn import GraphTransformNet  # noqa: E402


def time_step(params: list[torch.nn.Parameter], reps: int, **kw) -> float:
    opt = torch.optim.Adam(params, lr=1e-3, **kw)
    for p in params:
        p.grad = torch.randn_like(p)
    times = []
    for i in range(reps + 5):
        t0 = time.perf_counter()
        opt.step()
        if i >= 5:
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main(reps: int = 60) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    graph = GraphTransformNet(max_answer_length=8)
    n = sum(p.numel() for p in graph.parameters())
    models = {
        "graph default": graph,
        "graph head_factorized, enc 3": GraphTransformNet(
            max_answer_length=8, head_factorized=True, encoder_layers=3),
        "gru (matched)": sm.Seq2Seq(sm.gru_hidden_for(n, 64), 64, 0.2),
    }
    print(f"torch threads: {torch.get_num_threads()}; Adam.step, ms (median of {reps})")
    print("| model | params | tensors | for-loop | foreach | fused | loop / fused |")
    print("|---|---|---|---|---|---|---|")
    for name, model in models.items():
        params = [p for p in model.parameters() if p.requires_grad]
        loop = time_step(params, reps, foreach=False)
        each = time_step(params, reps, foreach=True)
        fused = time_step(params, reps, fused=True)
        print(f"| {name} | {sum(p.numel() for p in params):,} | {len(params)} | {loop:.2f} | "
              f"{each:.2f} | {fused:.2f} | {loop / fused:.1f} |")


if __name__ == "__main__":
    main()
