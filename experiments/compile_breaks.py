"""The torch.compile graph breaks of ``GraphTransformNet()(batch)`` and
``ExpressionNet()(batch)``, counted by ``torch._dynamo.explain`` on every path:
GraphTransformNet's layer form, run positions, training or evaluation mode, forced answer
lengths or the threshold; ExpressionNet's span features, mode, and a threshold that
merges graphemes into tokens or one that keeps them apart.

    python experiments/compile_breaks.py [--verbose] [--models transform expression]

Prints one table per model, one row per path: explain's break count (its graphs minus
one), its graphs, and the number of distinct places the breaks happen (the function a
break is in, or the ``torch.compiler.disable``d one it calls); ``--verbose`` lists each
break. Small model and batch: dynamo's tracing, not the model's size, is what is measured.
"""

from __future__ import annotations

import argparse
import collections
import re

import torch
from torch_geometric.data import Batch

from pyg_grapheme import text_to_graph
from pyg_grapheme.nn import ExpressionNet, GraphTransformNet

QUESTIONS = ["What colour is the sky?", "How many legs?", "caf\u00e9 \U0001F431 12 345", "a"]
EXPRESSIONS = ["(+ 3 4)", "(- (* 12 4) 5)", "(* 7 (+ 2 9))", "(+ 1 0)"]


def site(reason) -> str:
    """The function a break is in, or the ``torch.compiler.disable``d one it calls."""
    called = re.search(r"<function ([\w.]+) at", reason.reason)
    return called.group(1) if called else reason.user_stack[-1].name


def count(net: torch.nn.Module, inputs: Batch, cells: list[str], verbose: bool,
          **kwargs) -> None:
    """One row: the path's ``cells``, then explain's breaks, graphs and break sites."""
    torch._dynamo.reset()
    explain = torch._dynamo.explain(net)(inputs, **kwargs)
    sites = collections.Counter(site(r) for r in explain.break_reasons)
    print(f"| {' | '.join(cells)} | {explain.graph_break_count} | {explain.graph_count} | "
          f"{len(sites)} |")
    if verbose:
        for r in explain.break_reasons:
            f = r.user_stack[-1]
            print(f"    {f.filename.split('/')[-1]}:{f.lineno} {f.name} -> "
                  f"{site(r)}: {r.reason.splitlines()[0][:80]}")


def transform_net(verbose: bool) -> None:
    inputs = Batch.from_data_list([text_to_graph(q) for q in QUESTIONS])
    print("GraphTransformNet\n")
    print("| block | run_positions | mode | num_out | breaks | graphs | break sites |")
    print("|---|---|---|---|---|---|---|")
    for block in ("gps", "pre_ln"):
        for run_positions in (0, 32):
            for training in (True, False):
                for forced in (False, True):
                    torch.manual_seed(0)
                    net = GraphTransformNet(hidden=16, heads=2, max_answer_length=8,
                                            block=block, run_positions=run_positions)
                    net.train(training)
                    kwargs = {"num_out": torch.tensor([2, 1, 3, 4])} if forced else {}
                    count(net, inputs, [block, str(run_positions),
                                        "train" if training else "eval",
                                        "given" if forced else "-"], verbose, **kwargs)


def expression_net(verbose: bool) -> None:
    inputs = Batch.from_data_list([text_to_graph(q) for q in EXPRESSIONS])
    print("\nExpressionNet (token_layers=2)\n")
    print("| span_features | mode | pool_threshold | breaks | graphs | break sites |")
    print("|---|---|---|---|---|---|")
    for span in (True, False):
        for training in (True, False):
            for threshold in (0.9, 0.3):  # untrained: 41 graphemes stay 41 tokens; 5 at 0.3
                torch.manual_seed(0)
                net = ExpressionNet(hidden=16, heads=2, token_layers=2, span_features=span,
                                    pool_threshold=threshold).train(training)
                count(net, inputs, [str(span), "train" if training else "eval",
                                    str(threshold)], verbose)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--models", nargs="+", default=["transform", "expression"],
                    choices=["transform", "expression"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}\n")
    if "transform" in args.models:
        transform_net(args.verbose)
    if "expression" in args.models:
        expression_net(args.verbose)


if __name__ == "__main__":
    main()
