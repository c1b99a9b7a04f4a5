"""Issue 11, math2: does the graph model learn slower per epoch, or only per CPU second?

Trains one model (``--model graph`` or ``gru``) exactly as ``baseline_seq2seq.py`` does
(its ``train_graph`` / ``train_gru``, the shared ``fit``: Lightning ``Trainer``, Adam 1e-3,
clipping at 1, batch 32, the CPU-second budget, best-val checkpoint), with one addition:
after every epoch's validation a probe answers ``--probe`` fixed training questions
greedily and records, per epoch, the CPU seconds used, the epoch's own CPU seconds, val
exact match and the probe's train exact match. The probe's own CPU time is taken out of
the budget (it moves the budget's start), so the model trains as long as it would have
without it. ``--profile N`` instead runs N epochs under cProfile and prints where the
harness's epoch time goes.

    python experiments/math2_curves.py --model graph --budget-s 240 --out g.json
    python experiments/math2_curves.py --model gru --budget-s 240 --out r.json
    python experiments/math2_curves.py --model graph --profile 1
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

import baseline_seq2seq as bs  # noqa: E402
import seq2seq_models as sm  # noqa: E402

CURVE: list[dict] = []


def _probe_answers(module, questions: list[str]) -> list[str]:
    if hasattr(module, "answer"):  # the byte models' Seq2SeqModule
        out = module.answer(questions)
        module.model.train()
        return out
    return module.model.generate(questions)  # restores the training mode itself


def make_budget(probe: list[tuple[str, str]]):
    class ProbingBudget(sm.CpuBudget):
        """:class:`CpuBudget` plus the per-epoch probe, its CPU time not counted."""

        last = 0.0

        def on_validation_end(self, trainer, module) -> None:
            if not trainer.sanity_checking and probe:
                t0 = time.process_time()
                with torch.no_grad():
                    answers = _probe_answers(module, [q for q, _ in probe])
                train_em = sum(a == t for a, (_, t) in zip(answers, probe, strict=True))
                spent = time.process_time() - t0
                self.start += spent  # the probe is not training: keep the budget honest
                used = self.used()
                CURVE.append(dict(
                    epoch=trainer.current_epoch + 1, cpu_s=round(used, 1),
                    epoch_cpu_s=round(used - self.last, 2),
                    val_em=round(float(trainer.callback_metrics.get("val_exact_match", -1)), 4),
                    train_em=round(train_em / len(probe), 4),
                    train_loss=round(float(trainer.callback_metrics.get("train_loss", -1)), 4)))
                self.last = used
                c = CURVE[-1]
                print(f"  epoch {c['epoch']:3d} cpu {c['cpu_s']:6.1f}s (+{c['epoch_cpu_s']:.1f})"
                      f"  loss {c['train_loss']:.3f}  train EM {c['train_em']:.3f}"
                      f"  val EM {c['val_em']:.3f}", flush=True)
            super().on_validation_end(trainer, module)

    return ProbingBudget


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("graph", "gru"), default="graph")
    p.add_argument("--task", default="math2")
    p.add_argument("--budget-s", type=float, default=240.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--probe", type=int, default=500, help="training questions probed")
    p.add_argument("--graph-kwargs", default="")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (the harness: 1e-3)")
    p.add_argument("--gru-hidden", type=int, default=0, help="0: match the graph model")
    p.add_argument("--data-dir", type=Path, default=Path("/work/main/data_cache/baseline"))
    p.add_argument("--profile", type=int, default=0, help="profile this many epochs instead")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    data = bs.load_task(args.task, args.data_dir, args.seed)
    kwargs = bs.parse_kwargs(args.graph_kwargs)
    probe = [] if args.profile else data.pairs["train"][: args.probe]
    sm.CpuBudget = make_budget(probe)  # fit() builds its budget from this name
    common = dict(budget_s=args.budget_s if not args.profile else 1e9, seed=args.seed,
                  max_epochs=args.profile or 100_000, log=None, lr=args.lr)
    prof = cProfile.Profile() if args.profile else None

    def run():
        if args.model == "graph":
            return bs.train_graph(data, cache_dir=args.data_dir, module_kwargs=kwargs, **common)
        hidden = args.gru_hidden or sm.gru_hidden_for(bs.graph_parameters(), 64)
        return bs.train_gru(data, hidden=hidden, **common)[0]

    if prof is not None:
        prof.enable()
    result = run()
    if prof is not None:
        prof.disable()
        stats = pstats.Stats(prof).sort_stats("cumulative")
        stats.print_stats(45)
        stats.sort_stats("tottime").print_stats(30)
    print(f"{args.model} {args.graph_kwargs}: {result.params:,} params, {result.epochs} epochs, "
          f"{result.cpu_s:.0f} CPU s, best epoch {result.best_epoch}, EM train "
          f"{result.exact['train']:.3f} val {result.exact['val']:.3f} test "
          f"{result.exact['test']:.3f}")
    if args.out:
        args.out.write_text(json.dumps(dict(
            command="python experiments/math2_curves.py " + " ".join(sys.argv[1:]),
            result=bs.asdict(result), curve=CURVE), indent=1) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
