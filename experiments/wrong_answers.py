"""Which kindergarten answers an objective leaves wrong, and how (docs/training.md).

Trains GraphTransformNet on the kindergarten set as ``objective_ablation.py`` does (full
batch, seed 0, clipping 0.25) for ``--epochs`` epochs, then prints every question whose
thresholded answer differs from the target. It found that ``structural_loss`` alone left
anagrams (``elephant`` -> ``phaelent``), which the order term fixes::

    python experiments/wrong_answers.py --objective "structural, forced" \\
        --graph-kwargs loss.node_cost=nll --epochs 150
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from baseline_seq2seq import build_graph, parse_kwargs  # noqa: E402
from objective_ablation import OBJECTIVES  # noqa: E402


def wrong_answers(kwargs: dict, epochs: int) -> list[tuple[int, str, str, str]]:
    """(index, question, target, answer) for every answer wrong after training."""
    import lightning as L

    from pyg_grapheme.data import read_pairs
    from pyg_grapheme.data.datasets import kindergarten_path
    from pyg_grapheme.training import GraphemeDataModule

    L.seed_everything(0, workers=True)
    module = build_graph(max_answer_length=16, num_examples=0, **kwargs)
    with tempfile.TemporaryDirectory() as root:
        data = GraphemeDataModule(train_file="kindergarten", batch_size=128, shuffle=False,
                                  root=str(Path(root) / "cache"))
        trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1,
                            deterministic=True, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False,
                            limit_val_batches=0, default_root_dir=root,
                            gradient_clip_val=0.25)
        trainer.fit(module, datamodule=data)
    pairs = read_pairs(kindergarten_path())
    model = module.model.eval()
    with torch.no_grad():
        answers = model.generate([q for q, _ in pairs])
    rows = zip(pairs, answers, strict=True)
    return [(i, q, a, o) for i, ((q, a), o) in enumerate(rows) if a != o]


def main(argv: Sequence[str] | None = None) -> list[tuple[int, str, str, str]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--objective", default="structural, forced", choices=list(OBJECTIVES))
    ap.add_argument("--graph-kwargs", default="", help="added to the objective's, "
                    "'key=value,...' as in baseline_seq2seq.py")
    ap.add_argument("--epochs", type=int, default=150)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    kwargs = {**OBJECTIVES[args.objective], **parse_kwargs(args.graph_kwargs)}
    with warnings.catch_warnings():  # the solver's non-convergence notes, not the point
        warnings.simplefilter("ignore", RuntimeWarning)
        wrong = wrong_answers(kwargs, args.epochs)
    print(f"{len(wrong)} of 65 wrong after {args.epochs} epochs ({args.objective}, "
          f"{args.graph_kwargs or 'no extra kwargs'})")
    for i, question, target, answer in wrong:
        print(f"- pair {i}: {question!r}: {answer!r} (target {target!r})")
    return wrong


if __name__ == "__main__":
    main()
