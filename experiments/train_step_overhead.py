"""Where a training step of the harness goes: the graph model as
``baseline_seq2seq.py`` trains it (``GraphemeModule`` on ``GraphemeDataModule``, through
the harness's own ``seq2seq_models.fit``, for ``--epochs`` epochs), timed by phase with
``time.process_time`` (one torch thread).

Per training step, medians over the epochs after the first: data (from the end of one
step to the start of the next: fetching and collating the batch), forward (the
module's ``training_step``: the network, the loss and its logging), backward, and the
rest (gradient norm, clipping, ``Adam.step``, the hooks). Also the CPU time spent inside
``LightningModule.log`` and in ``on_before_optimizer_step``, and ``self.log`` calls per
step (validation's calls are counted with them, spread over the training steps).

Run it against another checkout of the package to compare (the package is imported
from the first ``sys.path`` entry, so ``PYTHONPATH`` picks it)::

    python experiments/train_step_overhead.py --task math2 --epochs 3
    git worktree add /tmp/before <rev>
    PYTHONPATH=/tmp/before python experiments/train_step_overhead.py --task math2 --epochs 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

if os.environ.get("PYTHONPATH"):  # a checkout to measure, ahead of this one
    sys.path.insert(0, os.environ["PYTHONPATH"].split(os.pathsep)[0])
sys.path.append(str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# the package first: baseline_seq2seq puts this checkout first on sys.path when imported
import pyg_grapheme  # noqa: E402, I001
from pyg_grapheme.training import GraphemeDataModule  # noqa: E402

import lightning as L  # noqa: E402
from baseline_seq2seq import answer_slots, build_graph, load_task  # noqa: E402
from seq2seq_models import fit  # noqa: E402


class PhaseTimer(L.Callback):
    """Process time of each phase of every training step, by epoch."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, float, float, float, float]] = []
        self._end: float | None = None

    def on_train_epoch_start(self, trainer, module) -> None:
        self._end = None  # the first fetch of an epoch also starts its iterator

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        now = time.process_time()
        self._data = now - self._end if self._end is not None else float("nan")
        self._start = now

    def on_before_backward(self, trainer, module, loss) -> None:
        self._fwd = time.process_time()

    def on_after_backward(self, trainer, module) -> None:
        self._bwd = time.process_time()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self._end = time.process_time()
        self.rows.append((trainer.current_epoch, self._data, self._fwd - self._start,
                          self._bwd - self._fwd, self._end - self._bwd))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="math2")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--data-dir", type=Path, default=Path("data_cache/baseline"))
    args = p.parse_args(argv)
    if args.epochs < 2:
        p.error("--epochs must be at least 2 (the first epoch is not counted)")
    torch.set_num_threads(1)
    data = load_task(args.task, args.data_dir, args.seed)
    torch.manual_seed(args.seed)
    module = build_graph(128, 1e-3, answer_slots(data))
    module.hparams.num_examples = 0
    spent = {"log": 0.0, "calls": 0, "grad hook": 0.0, "log in training": 0.0,
             "calls in training": 0}
    cls = type(module)
    log, hook = cls.log, cls.on_before_optimizer_step

    def timed_log(self, *a, **k):
        t = time.process_time()
        log(self, *a, **k)
        if self.current_epoch > 0:
            dt = time.process_time() - t
            spent["log"] += dt
            spent["calls"] += 1
            if self.trainer.training:
                spent["log in training"] += dt
                spent["calls in training"] += 1

    def timed_hook(self, optimizer):
        t = time.process_time()
        hook(self, optimizer)
        if self.current_epoch > 0:
            spent["grad hook"] += time.process_time() - t

    cls.log, cls.on_before_optimizer_step = timed_log, timed_hook
    dm = GraphemeDataModule(train_file=str(data.files["train"]), val_file=str(data.files["val"]),
                            batch_size=args.batch_size, root="data_cache")
    timer = PhaseTimer()
    # the epochs end it, not the CPU budget
    fit(module, dm, budget_s=1e9, max_epochs=args.epochs, log=None, callbacks=[timer])
    rows = [r for r in timer.rows if r[0] > 0]
    steps = len(rows)
    cols = list(zip(*rows, strict=True))[1:]
    med = [1e3 * statistics.median(x for x in col if x == x) for col in cols]  # nan: none
    print(f"package: {Path(pyg_grapheme.__file__).parent}; task {args.task}, batch "
          f"{args.batch_size}, epochs 2-{args.epochs} ({steps} steps), CPU ms per step "
          f"(medians), torch threads {torch.get_num_threads()}")
    print("| data | forward (training_step) | backward | clip, Adam, hooks | step total | "
          "in self.log: all (in training) | self.log calls: all (in training) | "
          "in on_before_optimizer_step |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {med[0]:.1f} | {med[1]:.1f} | {med[2]:.1f} | {med[3]:.1f} | {sum(med):.1f} | "
          f"{1e3 * spent['log'] / steps:.2f} ({1e3 * spent['log in training'] / steps:.2f}) | "
          f"{spent['calls'] / steps:.1f} ({spent['calls in training'] / steps:.1f}) | "
          f"{1e3 * spent['grad hook'] / steps:.2f} |")


if __name__ == "__main__":
    main()
