"""Forward+backward speed of GraphTransformNet + its training loss (segmentation_nll),
and of the edge head of graph-shaped answers (EdgeHead against ByteHead).

    python experiments/bench_model.py [--threads 1] [--repeats 5] [--tables model sizes edge]
        [--out experiments/results/bench_model.json]

Table 1: graphs/s for batches of 64 QA-sized graphs (20-60 graphemes, answers 1-8),
forward only, forward+backward (the training step without the optimizer), and a whole
Adam step, at canvas sizes (``max_answer_length``, the cap on the answer's length)
8 .. 64: how the cost grows with the cap, for each layer form (``block``). Table 2: one
graph of n = 100 .. 4,000 nodes (canvas 32): seconds per forward+backward and
microseconds per node (the encoder's self-attention is quadratic in n). Table 3: the
edge head (:class:`~pyg_grapheme.nn.EdgeHead`, every ordered pair of an output graph's
``m`` nodes, O(m^2) per graph) against the byte head (:class:`~pyg_grapheme.nn.ByteHead`,
O(m)) on the same nodes, one row per canvas size ``m``: 64 graphs, the model's hidden
size, forward+backward, and their ratio (measured back to back in the same run); the
ratio grows linearly in ``m``. Table 4: the training loss,
:func:`~pyg_grapheme.loss.segmentation_nll`, forward+backward per canvas size, left and
right aligned, against the one-hot form it replaced (emissions as a product of the
``[T, S * K]`` log-probs with the targets' one-hot, the log-probs mirrored for
``align="right"``; the same forward algorithm), the two interleaved in the same run.
The torch thread count is fixed and printed (oversubscription on a loaded machine makes
small ops far slower). ``--out FILE.json`` writes the measured rows (the README's speed
table is rendered from it by ``experiments/readme_tables.py``).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import string
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch_geometric.data import Batch

from pyg_grapheme import text_to_graph
from pyg_grapheme.loss import segmentation_nll
from pyg_grapheme.nn import ByteHead, EdgeHead, GraphTransformNet


def random_text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.ascii_lowercase + " ") for _ in range(n))


def batch_of(rng: random.Random, sizes: list[int], answer: list[int]):
    inputs = Batch.from_data_list([text_to_graph(random_text(rng, n)) for n in sizes])
    targets = Batch.from_data_list([text_to_graph(random_text(rng, m)) for m in answer])
    return inputs, targets


def loss_of(model, inputs, targets):
    pred = model(inputs)
    return segmentation_nll(pred.canvas_log_probs, pred.canvas_batch, pred.merge_logit,
                            targets.x, targets.batch, targets.num_graphs,
                            align=model.canvas_align)


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000, 4000])
    ap.add_argument("--canvas", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--blocks", nargs="+", default=["gps", "pre_ln"],
                    help="GraphTransformNet layer forms to time in table 1")
    ap.add_argument("--tables", nargs="+", default=["model", "sizes", "edge", "loss"],
                    choices=["model", "sizes", "edge", "loss"], help="which tables to print")
    ap.add_argument("--out", type=Path, help="write the measured rows as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    rng = random.Random(0)
    inputs, targets = batch_of(rng, [rng.randint(20, 60) for _ in range(64)],
                               [rng.randint(1, 8) for _ in range(64)])
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"median of {args.repeats}")
    tables = {}
    if "model" in args.tables:
        tables["model"] = model_table(args, inputs, targets)
    if "sizes" in args.tables:
        tables["sizes"] = size_table(args, rng)
    if "edge" in args.tables:
        tables["edge"] = edge_table(args)
    if "loss" in args.tables:
        tables["loss"] = loss_table(args)
    result = {"threads": torch.get_num_threads(), "cpus": os.cpu_count(),
              "repeats": args.repeats,
              "torch": torch.__version__, "load": load, **tables}
    if args.out:
        from readme_tables import write_result  # experiments/ is the script's path

        write_result(args.out, "bench_model", "bench_model.py", result, argv)
        print(f"results written to {args.out}")
    return result


def edge_table(args, graphs: int = 64) -> list[dict]:
    """EdgeHead (all ordered pairs, O(m^2) per graph) against ByteHead (O(m)) per canvas."""
    hidden = GraphTransformNet().hidden
    torch.manual_seed(0)
    edge, byte = EdgeHead(hidden), ByteHead(hidden)
    print(f"\n{graphs} output graphs of m nodes, hidden {hidden}, forward+backward")
    print("| canvas m | pairs | EdgeHead ms | ByteHead ms | ratio | EdgeHead us/pair |")
    print("|---|---|---|---|---|---|")
    rows = []
    for m in args.canvas:
        x = torch.randn(graphs * m, hidden, requires_grad=True)
        batch = torch.arange(graphs).repeat_interleave(m)
        pos = torch.arange(m).repeat(graphs)

        def run_edge(x=x, batch=batch, pos=pos):
            edge(x, batch, pos).edge_weight.sum().backward()

        def run_byte(x=x):
            byte(x).sum().backward()

        te, tb = timed(run_edge, args.repeats), timed(run_byte, args.repeats)
        pairs = graphs * m * (m - 1)
        print(f"| {m} | {pairs:,} | {1e3 * te:.1f} | {1e3 * tb:.1f} | {te / tb:.2f} | "
              f"{1e6 * te / pairs:.3f} |")
        rows.append({"canvas": m, "pairs": pairs, "edge_s": te, "byte_s": tb})
    return rows


def onehot_segmentation_nll(log_probs, batch, merge_logit, target, target_batch, num_graphs,
                            align="left"):
    """The peer of table 4: :func:`segmentation_nll` as it was before the gather (valid
    pairs only; the same forward algorithm)."""
    import torch.nn.functional as F
    from torch_geometric.utils import to_dense_batch

    from pyg_grapheme.loss import segmentation as seg

    B = num_graphs
    if align == "right":
        edge_batch = batch[:-1][batch[1:] == batch[:-1]]
        log_probs = log_probs[seg.reverse_within_graphs(batch, B)]
        merge_logit = merge_logit[seg.reverse_within_graphs(edge_batch, B)]
        target = target[seg.reverse_within_graphs(target_batch, B)]
    t_len, m_len = torch.bincount(batch, minlength=B), torch.bincount(target_batch, minlength=B)
    T, M = int(t_len.max()), int(m_len.max())
    lp = to_dense_batch(log_probs.flatten(1), batch, batch_size=B, max_num_nodes=T)[0]
    onehot = F.one_hot(target.long(), log_probs.size(-1)).to(lp.dtype).flatten(1)
    yt = to_dense_batch(onehot, target_batch, batch_size=B, max_num_nodes=M)[0]
    z = seg._dense_chain_logits(merge_logit, batch, B, T)
    ll = seg._chain_forward(lp @ yt.transpose(1, 2), z, t_len, m_len)
    return (-ll / m_len.clamp_min(1)).mean()


def loss_table(args, graphs: int = 64) -> list[dict]:
    """segmentation_nll (gathered emissions) against its one-hot form, per canvas."""
    from pyg_grapheme.data import GRAPHEME_WIDTH

    print(f"\n{graphs} canvases of m nodes, {GRAPHEME_WIDTH} byte slots x 256 classes, "
          "answers of 1..m/2 graphemes, forward+backward of the loss alone")
    print("| canvas m | align | segmentation_nll ms | one-hot form ms | speed-up | max diff |")
    print("|---|---|---|---|---|---|")
    rows = []
    gen = torch.Generator().manual_seed(0)
    for m in args.canvas:
        lens = torch.randint(1, m // 2 + 1, (graphs,), generator=gen)
        batch = torch.arange(graphs).repeat_interleave(m)
        target_batch = torch.arange(graphs).repeat_interleave(lens)
        target = torch.randint(0, 256, (int(lens.sum()), GRAPHEME_WIDTH), generator=gen)
        log_probs = torch.randn(graphs * m, GRAPHEME_WIDTH, 256, generator=gen).log_softmax(-1)
        logit = torch.randn(graphs * (m - 1), generator=gen)
        for align in ("left", "right"):
            def run(fn, align=align, log_probs=log_probs, logit=logit, batch=batch,
                    target=target, target_batch=target_batch):
                lp, z = log_probs.clone().requires_grad_(), logit.clone().requires_grad_()
                loss = fn(lp, batch, z, target, target_batch, graphs, align=align)
                loss.backward()
                return loss.detach()

            # (these two runs are also the warm-up)
            diff = float((run(segmentation_nll) - run(onehot_segmentation_nll)).abs())
            # Interleaved, so that a change in the machine's load hits both alike.
            times: dict = {segmentation_nll: [], onehot_segmentation_nll: []}
            for _ in range(args.repeats):
                for fn, ts in times.items():
                    t0 = time.perf_counter()
                    run(fn)
                    ts.append(time.perf_counter() - t0)
            t_new, t_old = (statistics.median(ts) for ts in times.values())
            print(f"| {m} | {align} | {1e3 * t_new:.2f} | {1e3 * t_old:.2f} | "
                  f"{t_old / t_new:.2f}x | {diff:.1e} |")
            rows.append({"canvas": m, "align": align, "gather_s": t_new, "onehot_s": t_old,
                         "max_diff": diff})
    return rows


def model_table(args, inputs, targets) -> list[dict]:
    print("\n| layers | canvas (max_answer_length) | parameters | forward graphs/s | "
          "forward+backward graphs/s | Adam step graphs/s |")
    print("|---|---|---|---|---|---|")
    rows = []
    for block, k in ((b, k) for k in args.canvas for b in args.blocks):
        torch.manual_seed(0)
        model = GraphTransformNet(max_answer_length=k, block=block)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        params = sum(p.numel() for p in model.parameters())

        def forward(model=model):
            with torch.no_grad():
                loss_of(model, inputs, targets)

        def forward_backward(model=model):
            model.zero_grad()
            loss_of(model, inputs, targets).backward()

        def step(opt=opt, fb=forward_backward):
            fb()
            opt.step()

        rates = [64 / timed(fn, args.repeats) for fn in (forward, forward_backward, step)]
        print(f"| {block} | {k} | {params:,} | " + " | ".join(f"{r:.0f}" for r in rates)
              + " |")
        rows.append({"block": block, "canvas": k, "parameters": params, "forward": rates[0],
                     "forward_backward": rates[1], "step": rates[2]})
    return rows


def size_table(args, rng) -> list[dict]:
    torch.manual_seed(0)
    model = GraphTransformNet(max_answer_length=32)
    print("\n| nodes per graph | s forward+backward | us / node |")
    print("|---|---|---|")
    rows = []
    for n in args.sizes:
        inp, tgt = batch_of(rng, [n], [8])

        def fb(inp=inp, tgt=tgt):
            model.zero_grad()
            loss_of(model, inp, tgt).backward()

        t = timed(fb, max(2, args.repeats // 2))
        print(f"| {n} | {t:.3f} | {1e6 * t / n:.1f} |")
        rows.append({"nodes": n, "forward_backward_s": t})
    return rows


if __name__ == "__main__":
    main()
