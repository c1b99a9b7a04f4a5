"""The torch.compile graph breaks of ``GraphTransformNet()(batch)``, counted by
``torch._dynamo.explain`` on every path: layer form, run positions, training or
evaluation mode, forced answer lengths or the threshold.

    python experiments/compile_breaks.py [--verbose]

Prints one row per path: explain's break count (its graphs minus one), its graphs, and
the number of distinct places the breaks happen (the function a break is in, or the
``torch.compiler.disable``d one it calls); ``--verbose`` lists each break.
Small model and batch: dynamo's tracing, not the model's size, is what is measured.
"""

from __future__ import annotations

import argparse
import collections
import re

import torch
from torch_geometric.data import Batch

from pyg_grapheme import text_to_graph
from pyg_grapheme.nn import GraphTransformNet

QUESTIONS = ["What colour is the sky?", "How many legs?", "caf\u00e9 \U0001F431 12 345", "a"]


def site(reason) -> str:
    """The function a break is in, or the ``torch.compiler.disable``d one it calls."""
    called = re.search(r"<function ([\w.]+) at", reason.reason)
    return called.group(1) if called else reason.user_stack[-1].name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    inputs = Batch.from_data_list([text_to_graph(q) for q in QUESTIONS])
    print(f"torch {torch.__version__}\n")
    print("| block | run_positions | mode | num_out | breaks | graphs | break sites |")
    print("|---|---|---|---|---|---|---|")
    for block in ("gps", "pre_ln"):
        for run_positions in (0, 32):
            for training in (True, False):
                for forced in (False, True):
                    torch._dynamo.reset()
                    torch.manual_seed(0)
                    net = GraphTransformNet(hidden=16, heads=2, max_answer_length=8,
                                            block=block, run_positions=run_positions)
                    net.train(training)
                    kwargs = {"num_out": torch.tensor([2, 1, 3, 4])} if forced else {}
                    explain = torch._dynamo.explain(net)(inputs, **kwargs)
                    sites = collections.Counter(site(r) for r in explain.break_reasons)
                    print(f"| {block} | {run_positions} | {'train' if training else 'eval'} "
                          f"| {'given' if forced else '-'} | {explain.graph_break_count} | "
                          f"{explain.graph_count} | {len(sites)} |")
                    if args.verbose:
                        for r in explain.break_reasons:
                            f = r.user_stack[-1]
                            print(f"    {f.filename.split('/')[-1]}:{f.lineno} {f.name} -> "
                                  f"{site(r)}: {r.reason.splitlines()[0][:80]}")


if __name__ == "__main__":
    main()
