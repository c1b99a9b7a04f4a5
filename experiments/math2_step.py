"""Issue 11, math2: the graph model's training step, per variant, interleaved.

Real math2 batches (seed 0 split, batch 32, the harness's canvas of 8 slots); each
repetition times one training step (forward, ``segmentation_nll``, backward, clipping at
1, Adam) of every variant in turn, so all see the same load; medians of CPU ms
(``time.process_time``, one thread), with the ratio against the default measured in the
same run. ``old`` is the default plus the second scoring pass of the pool's merge logits
that ``tensor_forward`` made before the selection carried them (the same maths).

    python experiments/math2_step.py --reps 40
    python experiments/math2_step.py --profile 20   # the default's step, by part

``--profile N``: N training steps of the default (after 3 warm-up steps), process CPU
time split into forward (with the loss), backward, gradient clipping and ``Adam.step``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from baseline_seq2seq import load_task, parse_kwargs  # noqa: E402
from torch_geometric.loader import DataLoader  # noqa: E402

from pyg_grapheme.data import FOLLOW_BATCH, PairData, split_pair_batch  # noqa: E402
from pyg_grapheme.loss import segmentation_nll  # noqa: E402
from pyg_grapheme.nn import GraphTransformNet  # noqa: E402

VARIANTS = {
    "default": "",
    "old (merge logits twice)": "",
    "head_factorized, enc 3": "head_factorized=True,encoder_layers=3",
    "head_factorized, dec 3": "head_factorized=True,decoder_layers=3",
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=40)
    p.add_argument("--data-dir", type=Path, default=Path("data_cache/baseline"))
    p.add_argument("--profile", type=int, default=0, metavar="N")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    data = load_task("math2", args.data_dir, 0)
    train = [PairData.from_texts(q, a) for q, a in data.pairs["train"][:640]]
    batches = list(DataLoader(train, batch_size=32, shuffle=False, follow_batch=FOLLOW_BATCH))
    if args.profile:
        return profile_step(batches, args.profile)
    models, opts = {}, {}
    for name, kw in VARIANTS.items():
        torch.manual_seed(0)
        models[name] = GraphTransformNet(max_answer_length=8, **parse_kwargs(kw)).train()
        opts[name] = torch.optim.Adam(models[name].parameters(), lr=1e-3)
    old = models["old (merge logits twice)"]
    select = old.pool.select

    def select_twice(x, edge_index, *a, **k):
        old.pool.merge_logits(x, edge_index)  # the removed second pass, same cost
        return select(x, edge_index, *a, **k)

    old.pool.select = select_twice
    times: dict[str, list[float]] = {n: [] for n in models}
    for rep in range(args.reps + 3):
        batch = batches[rep % len(batches)]
        inputs, targets = split_pair_batch(batch)
        for name, model in models.items():
            t0 = time.process_time()
            pred = model(inputs)
            loss = segmentation_nll(pred.canvas_log_probs, pred.canvas_batch, pred.merge_logit,
                                    targets.x, targets.batch, batch.num_graphs,
                                    align=model.canvas_align)
            opts[name].zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opts[name].step()
            if rep >= 3:
                times[name].append((time.process_time() - t0) * 1e3)
    base = statistics.median(times["default"])
    print(f"torch threads {torch.get_num_threads()}; training step, CPU ms, median of "
          f"{args.reps} interleaved")
    print("| variant | params | step ms | / default |")
    print("|---|---|---|---|")
    for name, model in models.items():
        med = statistics.median(times[name])
        n = sum(q.numel() for q in model.parameters())
        print(f"| {name} | {n:,} | {med:.1f} | {med / base:.2f} |")


def profile_step(batches: list, steps: int) -> None:
    """The default's training step by part: CPU time of each part summed over ``steps``
    steps (after 3 warm-up steps), as shares of the whole step."""
    torch.manual_seed(0)
    model = GraphTransformNet(max_answer_length=8).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    parts = {"forward + loss": 0.0, "backward": 0.0, "clip": 0.0, "Adam.step": 0.0}
    for rep in range(steps + 3):
        inputs, targets = split_pair_batch(batches[rep % len(batches)])
        marks = [time.process_time()]
        pred = model(inputs)
        loss = segmentation_nll(pred.canvas_log_probs, pred.canvas_batch, pred.merge_logit,
                                targets.x, targets.batch, targets.num_graphs,
                                align=model.canvas_align)
        marks.append(time.process_time())
        opt.zero_grad()
        loss.backward()
        marks.append(time.process_time())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        marks.append(time.process_time())
        opt.step()
        marks.append(time.process_time())
        if rep >= 3:
            for i, name in enumerate(parts):
                parts[name] += marks[i + 1] - marks[i]
    total = sum(parts.values())
    print(f"torch threads {torch.get_num_threads()}; the default's training step, "
          f"{steps} steps, {1e3 * total / steps:.1f} CPU ms per step")
    print("| part | CPU ms per step | share |")
    print("|---|---|---|")
    for name, t in parts.items():
        print(f"| {name} | {1e3 * t / steps:.1f} | {100 * t / total:.0f}% |")


if __name__ == "__main__":
    main()
