"""Diagnose answer collapse: how alike are the byte head's inputs for different questions?

Trains GraphTransformNet on the kindergarten set (full batch, seed 0, one thread, Adam,
the segmentation likelihood) and prints, every 10 steps, the mean pairwise cosine over
questions of the vector the byte head reads for each answer's first node, and how many
distinct answers the 65 questions get. Cosine near 1 with one distinct answer is the
collapse that made every question get the same answer for a long stretch of training.

    python experiments/diagnose_collapse.py                 # the defaults
    python experiments/diagnose_collapse.py --no-prior      # without ByteHead.init_output_prior

(The previous model's figures in docs/model.md were taken with a copy of this loop at
commit ebbfd03, whose GraphTransformNet and training step it used.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

from torch_geometric.loader import DataLoader  # noqa: E402

from pyg_grapheme.data import FOLLOW_BATCH, resolve_dataset, split_pair_batch  # noqa: E402
from pyg_grapheme.loss import segmentation_nll  # noqa: E402
from pyg_grapheme.nn import GraphTransformNet, decode_graphs  # noqa: E402


def mean_pairwise_cosine(features: torch.Tensor) -> float:
    f = torch.nn.functional.normalize(features, dim=1)
    n = f.size(0)
    return float(((f @ f.t()).sum() - n) / (n * (n - 1)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--no-prior", action="store_true", help="skip init_output_prior")
    parser.add_argument("--cache", default="data_cache")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = resolve_dataset("kindergarten", args.cache)
    batch = next(iter(DataLoader(data, batch_size=len(data), follow_batch=FOLLOW_BATCH)))
    inputs, targets = split_pair_batch(batch)
    # left-aligned, as measured (docs/model.md): slot 0 speaks each answer's first grapheme
    net = GraphTransformNet(max_answer_length=16, canvas_align="left")
    if not args.no_prior:
        net.head.init_output_prior(targets.x)
    seen: dict[str, torch.Tensor] = {}
    net.head.register_forward_hook(lambda m, i, o: seen.__setitem__("h", i[0].detach()))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    print("| step | cosine of first answer nodes | distinct answers |\n|---|---|---|")
    for step in range(args.steps + 1):
        if step % 10 == 0:
            net.eval()
            with torch.no_grad():
                pred = net(inputs)
            # the speaking slot of each answer's first grapheme (left-aligned: slot 0)
            first = torch.arange(inputs.num_graphs) * net.max_answer_length
            answers = decode_graphs(pred)
            print(f"| {step} | {mean_pairwise_cosine(seen['h'][first]):.4f} | "
                  f"{len(set(answers))}/{len(answers)} |", flush=True)
            net.train()
        if step == args.steps:
            break
        pred = net(inputs)
        loss = segmentation_nll(pred.canvas_log_probs, pred.canvas_batch, pred.merge_logit,
                                targets.x, targets.batch, inputs.num_graphs,
                                align=net.canvas_align)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 0.25)
        opt.step()


if __name__ == "__main__":
    main()
