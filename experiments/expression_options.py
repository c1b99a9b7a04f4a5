"""Text -> expression tree with the structural loss alone: which options train it.

A plain loop (no Lightning) over ExpressionNet + structural_loss on the curriculum's
expression pairs, one CPU thread, stopped after ``--secs`` seconds of wall clock (so the
number of steps reached depends on the machine's load: it is printed), evaluating the
held-out validation split after every epoch (graph exact match, decoded-text exact
match, per level), and printing a few decoded validation trees at the end.

    OMP_NUM_THREADS=1 python experiments/expression_options.py --levels 2 --secs 480 \
        --beta 0.3 --edge_bias -2 --lr 3e-3 --warm 150            # span features on
    ... --no_span                                                  # without them
    ... --warm 0                                                   # no beta warm-up
    ... --ce 1.0                                                   # + auxiliary plan CE

See docs/expression.md for the runs and what they showed.
"""

from __future__ import annotations

import argparse
import math
import random
import time

import torch
from torch_geometric.loader import DataLoader

from pyg_grapheme.data.expression import node_labels
from pyg_grapheme.data.graphemes import graphs_to_texts
from pyg_grapheme.data.pair import FOLLOW_BATCH, split_pair_batch
from pyg_grapheme.loss import structural_loss
from pyg_grapheme.nn.expression_net import ExpressionNet, hard_graphs
from pyg_grapheme.nn.head import one_hot_bytes
from pyg_grapheme.training.expression_module import ExpressionDataModule, score_expressions


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--levels", default="1,2")
    ap.add_argument("--secs", type=float, default=480)
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--beta", type=float, default=0.3)
    ap.add_argument("--reg", type=float, default=0.05)
    ap.add_argument("--node_cost", default="nll")
    ap.add_argument("--ce", type=float, default=0.0, help="auxiliary plan cross-entropy")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--bs", type=int, default=64)
    ap.add_argument("--thr", type=float, default=0.9, help="initial pool threshold")
    ap.add_argument("--keep_bias", type=float, default=0.0)
    ap.add_argument("--edge_bias", type=float, default=-2.0)
    ap.add_argument("--warm", type=int, default=150, help="steps with beta = 0")
    ap.add_argument("--no_span", action="store_true", help="edge head without span features")
    ap.add_argument("--no_prior", action="store_true", help="uniform byte head at start")
    ap.add_argument("--cosine", action="store_true", help="cosine lr decay over --secs")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(a.seed)
    random.seed(a.seed)
    dm = ExpressionDataModule(levels=[int(v) for v in a.levels.split(",")], batch_size=a.bs)
    train = dm.train_dataloader()
    val = DataLoader(dm._dataset("val"), batch_size=256, follow_batch=FOLLOW_BATCH)
    net = ExpressionNet(hidden=a.hidden, pool_threshold=a.thr, keep_bias=a.keep_bias,
                        edge_bias=a.edge_bias, span_features=not a.no_span)
    if not a.no_prior:
        net.head.init_output_prior(torch.cat([d.x_t for d in dm._dataset("train")]))
    opt = torch.optim.Adam(net.parameters(), lr=a.lr)

    def evaluate() -> tuple[float, float, dict[int, float]]:
        net.eval()
        graph = text = total = 0
        per_level: dict[int, list[bool]] = {}
        with torch.no_grad():
            for b in val:
                inputs, targets = split_pair_batch(b)
                exact, texts = score_expressions(net(inputs), targets)
                for e, t, q, lv in zip(exact, texts, graphs_to_texts(inputs),
                                       b.level.tolist(), strict=True):
                    graph += e
                    text += t == q
                    total += 1
                    per_level.setdefault(lv, []).append(e)
        net.train()
        return graph / total, text / total, {k: sum(v) / len(v) for k, v in per_level.items()}

    t0, step, epoch = time.time(), 0, 0
    while time.time() - t0 < a.secs:
        for b in train:
            inputs, targets = split_pair_batch(b)
            pred = net(inputs)
            beta = 0.0 if step < a.warm else a.beta
            loss, parts = structural_loss(pred, one_hot_bytes(targets), alpha=a.alpha,
                                          beta=beta, gamma=0.0, reg=a.reg,
                                          node_cost=a.node_cost, return_components=True)
            total = loss
            if a.ce:
                total = total + a.ce * parts["plan_cross_entropy"](
                    pred.logits, one_hot_bytes(targets).x)
            opt.zero_grad()
            total.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            step += 1
            if a.cosine:
                frac = min(1.0, (time.time() - t0) / a.secs)
                for group in opt.param_groups:
                    group["lr"] = a.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
            if step % 50 == 0:
                kept = float((pred.keep > 0.5).float().sum()) / b.num_graphs
                print(f"step {step} t={time.time() - t0:.0f}s loss {loss.item():.3f} "
                      f"node {parts['node'].mean():.3f} edge {parts['edge'].mean():.3f} "
                      f"merge {pred.merged.float().mean():.2f} kept {kept:.2f}", flush=True)
            if time.time() - t0 > a.secs:
                break
        epoch += 1
        graph, text, levels = evaluate()
        print(f"epoch {epoch} step {step} val graph {graph:.3f} text {text:.3f} "
              f"per level {levels} t={time.time() - t0:.0f}s", flush=True)

    net.eval()
    b = next(iter(val))
    inputs, targets = split_pair_batch(b)
    with torch.no_grad():
        pred = net(inputs)
    questions = graphs_to_texts(inputs)
    graphs = hard_graphs(pred)
    for g in range(max(0, len(graphs) - 4), len(graphs)):
        classes, edges = graphs[g]
        tgt = targets.edge_index[:, targets.batch[targets.edge_index[0]] == g] - targets.ptr[g]
        print(questions[g], node_labels(classes), edges.t().tolist(),
              "target", node_labels(targets.x[targets.batch == g]), tgt.t().tolist())


if __name__ == "__main__":
    main()
