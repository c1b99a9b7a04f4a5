"""Where the exact structural-loss solve spends its work (issue 10 item 2): counts, not
just milliseconds, so that runs on a loaded machine can be compared.

For the two problems of ``bench_loss.py`` (table 2: 64 random DAG pairs of 5..60 nodes,
reg 0.1, sqeuclidean/square, beta=1; table 4b: 32 byte-head chains of 3..19 nodes, the
defaults, float32), one forward+backward at the defaults, and prints: linearisation
steps, Sinkhorn solves, Sinkhorn iterations (the longest problem of each solve), the
multiply-adds of the Sinkhorn mat-vecs (problems that met the tolerance no longer
count), pairs whose stationarity residual is above 1e-3 / 1e-4, and the CPU time
(process time, median of 3).

    OMP_NUM_THREADS=1 .venv/bin/python experiments/probe_loss_solver.py
"""

from __future__ import annotations

import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch_geometric.data import Batch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_loss import chains, graph_problem  # noqa: E402

from pyg_grapheme.loss import structural_loss  # noqa: E402

SK = sys.modules["pyg_grapheme.loss.sinkhorn"]
ST = sys.modules["pyg_grapheme.loss.fgw"]


def problems() -> dict:
    preds, targets = graph_problem()
    t2 = (Batch.from_data_list(preds), Batch.from_data_list(targets),
          dict(alpha=1.0, beta=1.0, gamma=0.0, reg=0.1, node_cost="sqeuclidean",
               edge_loss="square"))
    g = torch.Generator().manual_seed(0)
    sizes = [int(v) for v in torch.randint(3, 20, (32,), generator=g)]
    tsizes = [max(1, s + int(d)) for s, d in
              zip(sizes, torch.randint(-2, 3, (32,), generator=g), strict=True)]
    t4 = (chains(sizes, g, (8, 256), soft=True, dtype=torch.float32),
          chains(tsizes, g, (8, 256), soft=False, dtype=torch.float32), {})
    return {"table 2 (64 DAG pairs, 5..60 nodes)": t2, "table 4b (32 byte-head chains)": t4}


def main() -> None:
    torch.set_num_threads(1)
    count = {"solves": 0, "iters": 0, "mac": 0}
    solve, bmm, baddbmm = SK.solve, torch.bmm, torch.baddbmm

    def counted_solve(*a, **k):
        out = solve(*a, **k)
        count["solves"] += 1
        count["iters"] += out[3]
        return out

    def counted_bmm(x, y, **k):  # the mat-vecs of SK.solve (bmm before, baddbmm now)
        count["mac"] += x.shape[0] * x.shape[1] * x.shape[2] * y.shape[2]
        return bmm(x, y, **k)

    def counted_baddbmm(inp, x, y, **k):
        count["mac"] += x.shape[0] * x.shape[1] * x.shape[2] * y.shape[2]
        return baddbmm(inp, x, y, **k)

    ST.solve, torch.bmm, torch.baddbmm = counted_solve, counted_bmm, counted_baddbmm
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print("| problem | steps | solves | Sinkhorn iterations | mat-vec MMAC | pairs > 1e-3 | "
          "pairs > 1e-4 | CPU ms (median of 3) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (pred, tgt, kw) in problems().items():
        def run(pred=pred, tgt=tgt, kw=kw):
            p = pred.clone()
            p.x.requires_grad_()
            p.edge_weight.requires_grad_()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                loss, parts = structural_loss(p, tgt, return_components=True, **kw)
                loss.backward()
            return parts
        run()
        ts = []
        for _ in range(3):
            for k in count:
                count[k] = 0
            t0 = time.process_time()
            parts = run()
            ts.append(time.process_time() - t0)
        res = parts["residual"]
        print(f"| {name} | {parts['outer_iter']} | {count['solves']} | {count['iters']} | "
              f"{count['mac'] / 1e6:.0f} | {int((res > 1e-3).sum())} | {int((res > 1e-4).sum())}"
              f" of {res.numel()} | {1e3 * statistics.median(ts):.0f} |")


if __name__ == "__main__":
    main()
