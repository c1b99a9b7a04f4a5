"""Which GraphTransformNet variant learns a generalisation task fastest, per step and per CPU s?

A Lightning-free loop (the training step of ``GraphemeModule``: the segmentation
likelihood, Adam, clipping at 1) over one curriculum task, batch 32, one thread; every
``--eval-every`` steps the validation exact match of greedy answers on ``--val`` questions.
Variants are ``GraphTransformNet`` keyword sets, ``;``-separated ``key=value,...`` lists.

    python experiments/arch_search.py --task place_value --steps 600 \\
        --variants "block=gps;block=pre_ln"
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))  # baseline_seq2seq next to this file

from baseline_seq2seq import parse_kwargs  # noqa: E402
from torch_geometric.loader import DataLoader  # noqa: E402

from pyg_grapheme.data import FOLLOW_BATCH, PairData, generate_task, split_pair_batch  # noqa: E402
from pyg_grapheme.loss import segmentation_nll  # noqa: E402
from pyg_grapheme.nn import GraphTransformNet  # noqa: E402


def run(task: str, variant: dict, steps: int, eval_every: int, n_val: int, seed: int,
        batch_size: int = 32, lr: float = 1e-3) -> list[tuple[int, float, float, float]]:
    data = generate_task(task, seed=0)
    train = [PairData.from_texts(r["input"], r["target"]) for r in data["train"]]
    val = data["val"][:n_val]
    longest = max(len(PairData.from_texts("", r["target"]).x_t) for r in data["train"])
    torch.manual_seed(seed)
    random.seed(seed)
    kwargs = {"max_answer_length": max(8, -(-longest // 8) * 8), **variant}
    model = GraphTransformNet(**kwargs)
    loader = DataLoader(train, batch_size=batch_size, shuffle=True, follow_batch=FOLLOW_BATCH)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    rows, step, cpu = [], 0, 0.0
    while step < steps:
        for batch in loader:
            t0 = time.process_time()
            model.train()
            inputs, targets = split_pair_batch(batch)
            pred = model(inputs)
            loss = segmentation_nll(pred.canvas_log_probs, pred.canvas_batch, pred.merge_logit,
                                    targets.x, targets.batch, batch.num_graphs,
                                    align=model.canvas_align)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            cpu += time.process_time() - t0
            step += 1
            if step % eval_every == 0 or step == steps:
                answers = []
                for i in range(0, len(val), 250):
                    answers += model.generate([r["input"] for r in val[i:i + 250]])
                em = sum(a == r["target"] for a, r in zip(answers, val, strict=True)) / len(val)
                rows.append((step, float(loss), em, cpu))
                print(f"  {variant} step {step} loss {float(loss):.3f} val_em {em:.3f} "
                      f"cpu {cpu:.0f}s", flush=True)
            if step >= steps:
                break
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="place_value")
    parser.add_argument("--variants", default="block=gps;block=pre_ln")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--val", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = {}
    for text in args.variants.split(";"):
        variant = parse_kwargs(text)
        results[text] = run(args.task, variant, args.steps, args.eval_every, args.val,
                            args.seed, lr=args.lr)
    print(f"\n{args.task}, batch 32, seed {args.seed}: validation exact match by step "
          "(CPU s of training in brackets)")
    for text, rows in results.items():
        cells = " | ".join(f"{em:.2f} ({cpu:.0f}s)" for _, _, em, cpu in rows)
        print(f"| {text or 'defaults'} | {cells} |")


if __name__ == "__main__":
    main()
