"""Where does GraphTransformNet lose steps against the byte Transformer? (issue 11)

One model per run, the training loop of ``arch_search.py`` (batch 32, Adam 1e-3, clipping
at 1, one thread, seed 0 data), every ``--every`` steps on ``--val`` validation questions:
exact match, the share of answers of the right length (``len_ok``), of the right first
grapheme (``first_ok``), the number of distinct answers (1 = every question gets the same
answer) and, on place value, exact match per place word. ``--model transformer`` trains
the harness's byte Transformer in the same loop (the peer); the other flags patch the
graph model for a diagnosis (docs/model.md):

    python experiments/step_diagnosis.py --task place_value --steps 750 --every 250
    python experiments/step_diagnosis.py --task place_value --model transformer --steps 750
    python experiments/step_diagnosis.py --task place_value \\
        --variant canvas_scale=0.02,run_positions=32
    python experiments/step_diagnosis.py --task place_value --swap-enc  # torch's layers
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from baseline_seq2seq import parse_kwargs, transformer_dim_for  # noqa: E402
from seq2seq_models import (  # noqa: E402
    PAD,
    VOCAB,
    Tensors,
    TransformerSeq2Seq,
    count_parameters,
    decode,
)
from torch_geometric.loader import DataLoader  # noqa: E402
from torch_geometric.utils import to_dense_batch  # noqa: E402

from pyg_grapheme.data import FOLLOW_BATCH, PairData, generate_task, split_pair_batch  # noqa: E402
from pyg_grapheme.loss import segmentation_nll  # noqa: E402
from pyg_grapheme.nn import GraphTransformNet  # noqa: E402

PLACES = re.compile(r"(units|tens|hundreds|ten thousands|hundred thousands|thousands|"
                    r"ten millions|hundred millions|millions)")


class TorchEncoderLayer(nn.Module):
    """``--swap-enc``: torch's pre-LN encoder layer (the Transformer peer's) in place of
    a GPSConv layer, on the dense batch of each question."""

    def __init__(self, hidden: int, last: bool) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(hidden, 4, 4 * hidden, 0.1, batch_first=True,
                                                norm_first=True)
        self.norm = nn.LayerNorm(hidden) if last else nn.Identity()

    def forward(self, x: Tensor, chain: Tensor, vec: Tensor) -> Tensor:
        dense, mask = to_dense_batch(x, vec)
        return self.norm(self.layer(dense, src_key_padding_mask=~mask)[mask])


class NoMessages(nn.Module):
    def forward(self, c: Tensor, edge_index: Tensor) -> Tensor:
        return c


def build_graph(args, longest: int) -> GraphTransformNet:
    kwargs = {"max_answer_length": max(8, -(-longest // 8) * 8), **parse_kwargs(args.variant)}
    model = GraphTransformNet(**kwargs)
    if args.swap_enc:
        model.enc = nn.ModuleList(TorchEncoderLayer(model.hidden, i == len(model.enc) - 1)
                                  for i in range(len(model.enc)))
    if args.no_local:
        model.local = nn.ModuleList(NoMessages() for _ in model.local)
    if args.no_canvas_norm:
        model.canvas_norm = nn.Identity()
    if args.detach_merge:  # merge logits train the projection and theta, not the canvas
        select = model.pool.select  # the model reads its merge logits from the selection
        model.pool.select = lambda x, *a, **k: select(x.detach(), *a, **k)
    return model


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="place_value")
    p.add_argument("--model", choices=("graph", "transformer"), default="graph")
    p.add_argument("--variant", default="", help="GraphTransformNet keywords, key=value,...")
    p.add_argument("--steps", type=int, default=750)
    p.add_argument("--every", type=int, default=250)
    p.add_argument("--val", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--tf-params", type=int, default=642_000,
                   help="the Transformer's parameter target")
    p.add_argument("--swap-enc", action="store_true")
    p.add_argument("--no-local", action="store_true", help="no DAGConv on the canvas")
    p.add_argument("--no-canvas-norm", action="store_true")
    p.add_argument("--detach-merge", action="store_true")
    p.add_argument("--head-prior", action="store_true",
                   help="output bias = the answers' byte prior (GraphemeModule's default)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    data = generate_task(args.task, seed=0)
    val = data["val"][: args.val]
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    if args.model == "graph":
        longest = max(len(PairData.from_texts("", r["target"]).x_t) for r in data["train"])
        model = build_graph(args, longest)
        train = [PairData.from_texts(r["input"], r["target"]) for r in data["train"]]
        loader = DataLoader(train, batch_size=32, shuffle=True, follow_batch=FOLLOW_BATCH)
        if args.head_prior:
            model.head.init_output_prior(torch.cat([d.x_t for d in train]))
    else:
        max_pos = max(len(r["input"].encode()) for split in data.values() for r in split) + 40
        model = TransformerSeq2Seq(transformer_dim_for(args.tf_params, 4, 2, 2, max_pos), None,
                                   4, 2, 2, max_pos, 0.1)
        tensors = Tensors.from_pairs([(r["input"], r["target"]) for r in data["train"]])
        gen = torch.Generator().manual_seed(args.seed)
    print(f"{args.model} {args.variant} params {count_parameters(model):,}", flush=True)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)

    def batches():
        if args.model == "graph":
            yield from loader
            return
        perm = torch.randperm(len(tensors), generator=gen)
        for i in range(0, len(tensors), 32):
            yield tensors.batch(perm[i : i + 32])

    def answers() -> list[str]:
        questions = [r["input"] for r in val]
        if args.model == "graph":
            return [a for i in range(0, len(questions), 250)
                    for a in model.generate(questions[i : i + 250])]
        rows = Tensors.from_pairs([(q, "") for q in questions])
        out: list[str] = []
        with torch.no_grad():
            for i in range(0, len(questions), 250):
                src, src_len, _, _ = rows.batch(torch.arange(i, min(i + 250, len(questions))))
                out += [decode(ids) for ids in model.greedy(src, src_len, 16)]
        return out

    def report(step: int, loss: float, cpu: float) -> None:
        model.eval()
        got, want = answers(), [r["target"] for r in val]
        n = len(want)
        em = sum(a == t for a, t in zip(got, want, strict=True)) / n
        len_ok = sum(len(a) == len(t) for a, t in zip(got, want, strict=True)) / n
        first_ok = sum(a[:1] == t[:1] for a, t in zip(got, want, strict=True)) / n
        places: dict[str, list[int]] = {}
        if args.task == "place_value":
            for r, a in zip(val, got, strict=True):
                m = PLACES.search(r["input"])
                cell = places.setdefault(m.group(1) if m else "?", [0, 0])
                cell[0] += a == r["target"]
                cell[1] += 1
        per_place = " ".join(f"{k}:{v[0] / v[1]:.2f}" for k, v in sorted(places.items()))
        print(f"step {step} loss {loss:.3f} em {em:.3f} len_ok {len_ok:.3f} first_ok "
              f"{first_ok:.3f} distinct {len(set(got))} cpu {cpu:.0f} {per_place}", flush=True)
        model.train()

    step, cpu = 0, 0.0
    model.train()
    while step < args.steps:
        for batch in batches():
            t0 = time.process_time()
            if args.model == "graph":
                inputs, targets = split_pair_batch(batch)
                pred = model(inputs)
                loss = segmentation_nll(pred.canvas_log_probs, pred.canvas_batch,
                                        pred.merge_logit, targets.x, targets.batch,
                                        batch.num_graphs, align=model.canvas_align)
            else:
                src, src_len, tgt_in, tgt_out = batch
                logits = model(src, src_len, tgt_in)
                loss = F.cross_entropy(logits.reshape(-1, VOCAB), tgt_out.reshape(-1),
                                       ignore_index=PAD)
            opt.zero_grad()
            loss.backward()
            if args.clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            opt.step()
            cpu += time.process_time() - t0
            step += 1
            if step % args.every == 0 or step == args.steps:
                report(step, float(loss.detach()), cpu)
            if step >= args.steps:
                break


if __name__ == "__main__":
    main()
