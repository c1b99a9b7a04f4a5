"""Issue 11: what one training step costs, for graph-model variants and the GRU at given
sizes, in float32 or under bfloat16 autocast, interleaved in one process.

math2 batches of 32 (seed 0 split); one step = forward, the model's loss
(``segmentation_nll`` or the GRU's teacher-forced cross-entropy), backward, clipping at
1 and ``Adam.step``. Every repetition runs each row once, so all rows see the same load;
the table prints medians of CPU ms (``time.process_time``, one thread) and each row's
ratio to the first row of its kind (and, with ``--bf16``, its bfloat16 / float32 ratio),
measured in the same run.

    OMP_NUM_THREADS=1 python experiments/step_cost.py --graph "" "heads=8" \\
        "hidden=96,encoder_layers=4" "hidden=192" --gru 1255297 2533057 --bf16 --reps 20
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from baseline_seq2seq import load_task, parse_kwargs  # noqa: E402
from seq2seq_models import PAD, VOCAB, Seq2Seq, Tensors, gru_hidden_for  # noqa: E402
from torch_geometric.data import Batch  # noqa: E402
from torch_geometric.loader import DataLoader  # noqa: E402

from pyg_grapheme.data import FOLLOW_BATCH, PairData, split_pair_batch  # noqa: E402
from pyg_grapheme.loss import segmentation_nll  # noqa: E402
from pyg_grapheme.nn import GraphTransformNet  # noqa: E402


def graph_loss(model: GraphTransformNet, batch: Batch) -> torch.Tensor:
    """The graph model's training loss on a batch of ``PairData``."""
    inputs, targets = split_pair_batch(batch)
    pred = model(inputs)
    # the likelihood runs in float32 whatever the autocast (segmentation_nll's own rule)
    return segmentation_nll(pred.canvas_log_probs, pred.canvas_batch, pred.merge_logit,
                            targets.x, targets.batch, targets.num_graphs,
                            align=model.canvas_align)


def gru_loss(model: Seq2Seq, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The GRU's teacher-forced cross-entropy on a padded byte batch."""
    src, src_len, tgt_in, tgt_out = batch
    logits = model(src, src_len, tgt_in).float()
    return F.cross_entropy(logits.reshape(-1, VOCAB), tgt_out.reshape(-1), ignore_index=PAD)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--graph", nargs="*", default=[""], metavar="KWARGS",
                   help="GraphTransformNet keywords per row, 'k=v,...' ('' = the default)")
    p.add_argument("--gru", nargs="*", type=int, default=[], metavar="PARAMS",
                   help="GRU rows, sized to these parameter counts as the harness sizes them")
    p.add_argument("--bf16", action="store_true",
                   help="each row also under torch.autocast('cpu', torch.bfloat16)")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--data-dir", type=Path, default=Path("data_cache/baseline"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    data = load_task("math2", args.data_dir, 0)
    pairs = data.pairs["train"][:640]
    graph_batches = list(DataLoader([PairData.from_texts(q, a) for q, a in pairs],
                                    batch_size=32, follow_batch=FOLLOW_BATCH))
    tensors = Tensors.from_pairs(pairs)
    byte_batches = [tensors.batch(torch.arange(i, min(i + 32, len(pairs))))
                    for i in range(0, len(pairs), 32)]

    # (kind, variant, a function that builds the model, its loss, its batches)
    rows: list[tuple[str, str, Callable[[], torch.nn.Module], Callable, list]] = []
    for kw in args.graph:
        rows.append(("graph", kw or "default",
                     lambda kw=kw: GraphTransformNet(max_answer_length=8, **parse_kwargs(kw)),
                     graph_loss, graph_batches))
    for params in args.gru:
        hidden = gru_hidden_for(params)
        rows.append(("gru", f"hidden {hidden}", lambda hidden=hidden: Seq2Seq(hidden, 64, 0.2),
                     gru_loss, byte_batches))
    precisions = ["float32", "bfloat16"] if args.bf16 else ["float32"]
    runs = []
    for kind, name, make, loss_fn, batches in rows:
        for prec in precisions:  # a model and an optimizer of its own per precision
            torch.manual_seed(0)
            model = make().train()
            runs.append((kind, name, prec, model, loss_fn, batches,
                         torch.optim.Adam(model.parameters(), lr=1e-3)))
    times: list[list[float]] = [[] for _ in runs]
    for rep in range(args.reps + 3):
        for k, (_, _, prec, model, loss_fn, batches, opt) in enumerate(runs):
            batch = batches[rep % len(batches)]
            start = time.process_time()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec == "bfloat16"):
                loss = loss_fn(model, batch)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if rep >= 3:  # warm-up
                times[k].append(1e3 * (time.process_time() - start))
    print(f"torch threads {torch.get_num_threads()}; training step, CPU ms, medians of "
          f"{args.reps} interleaved repetitions")
    med = {(kind, name, prec): statistics.median(ts)
           for (kind, name, prec, *_), ts in zip(runs, times, strict=True)}
    head = "| model | variant | params | float32 ms | / first row of its kind |"
    print(head + (" bfloat16 ms | bfloat16 / float32 |" if args.bf16 else ""))
    print("|---" * (7 if args.bf16 else 5) + "|")
    first: dict[str, float] = {}
    for kind, name, prec, model, *_ in runs:
        if prec != "float32":
            continue
        ms = med[(kind, name, "float32")]
        base = first.setdefault(kind, ms)
        params = sum(q.numel() for q in model.parameters())
        line = f"| {kind} | {name} | {params:,} | {ms:.1f} | {ms / base:.2f} |"
        if args.bf16:
            low = med[(kind, name, "bfloat16")]
            line += f" {low:.1f} | {low / ms:.2f} |"
        print(line)

if __name__ == "__main__":
    main()
