"""Which training objective teaches GraphTransformNet (issue 10's ablation table).

Objectives (``build_graph`` arguments: ``loss.*`` the ``StructuralLoss``, the rest
``GraphemeModule``'s; "forced" = segment_forcing, the target's count
given to the pool in training, with the forced cuts' NLL training the threshold; "learnt"
= no count given, the threshold learns from the loss alone):

* ``segmentation`` (the default): ``segmentation_nll`` alone, learnt count.
* ``structural``: the optimal-transport ``structural_loss`` (alpha 1, beta 0.5, gamma 2,
  the previous defaults) alone; forced and learnt (its count gradient reaches the
  threshold through the pool's expected-count estimator).
* ``cross-entropy``: the aligned cross-entropy (weight 10) alone; forced and learnt.
* ``structural + CE``: the previous default objective; forced and learnt.
* ``segmentation + structural``: both, learnt count.
* ``ordered structural``: ``structural_loss`` with ``node_cost="nll"`` and
  ``order_weight=2`` (the order-preserving positional term), forced and learnt, and
  with ``segmentation_nll``.

Kindergarten: full batch, seed 0, up to ``--epochs`` epochs, validation every 10 with
thresholded decoding; the first validated epoch with every answer right. math1: the
baseline comparison's harness (batch 32, ``--budget-s`` CPU seconds, best validation
checkpoint), test exact match. Everything else is the package's defaults (``build_graph``).

``--out FILE.json`` writes the command, the arguments and per objective its kwargs,
kindergarten's first perfect epoch (or null), best exact match, epochs and CPU seconds,
and math1's exact match, epochs and CPU seconds (``"kind": "ablation"``), after every
objective; ``experiments/readme_tables.py`` renders it into the README:

    OMP_NUM_THREADS=1 python experiments/objective_ablation.py --epochs 300 --budget-s 120 \\
        --out experiments/results/objective_ablation.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from baseline_seq2seq import build_graph, load_task, parse_kwargs, train_graph  # noqa: E402

STRUCTURAL = {"loss.alpha": 1.0, "loss.beta": 0.5, "loss.gamma": 2.0}
#: The structural loss as a teacher on text chains: the log-likelihood node cost and the
#: order-preserving positional term (``structural_loss(order_weight=...)``).
ORDERED = {**STRUCTURAL, "loss.node_cost": "nll", "loss.order_weight": 2.0}
OFF = {"segmentation_weight": 0.0}
OBJECTIVES: dict[str, dict] = {
    "segmentation, learnt": {},
    "structural, forced": {**OFF, **STRUCTURAL, "segment_forcing": True},
    "structural, learnt": {**OFF, **STRUCTURAL},
    "cross-entropy, forced": {**OFF, "ce_weight": 10.0, "segment_forcing": True},
    "cross-entropy, learnt": {**OFF, "ce_weight": 10.0},
    "structural + CE, forced": {**OFF, **STRUCTURAL, "ce_weight": 10.0,
                                "segment_forcing": True},
    "structural + CE, learnt": {**OFF, **STRUCTURAL, "ce_weight": 10.0},
    "segmentation + structural, learnt": {**STRUCTURAL},
    "ordered structural, forced": {**OFF, **ORDERED, "segment_forcing": True},
    "ordered structural, learnt": {**OFF, **ORDERED},
    "segmentation + ordered structural, learnt": {**ORDERED},
}
#: How the README names each objective.
LABELS: dict[str, str] = {
    "segmentation, learnt": "`segmentation_nll`, learnt count (**the default**)",
    "structural, forced": "`structural_loss` (OT, alpha 1, beta 0.5, gamma 2), forced",
    "structural, learnt": "`structural_loss`, learnt",
    "cross-entropy, forced": "aligned cross-entropy (weight 10), forced",
    "cross-entropy, learnt": "aligned cross-entropy, learnt",
    "structural + CE, forced": "structural + cross-entropy, forced (the default before "
                               "issue 10)",
    "structural + CE, learnt": "structural + cross-entropy, learnt",
    "segmentation + structural, learnt": "segmentation + structural, learnt",
    "ordered structural, forced": "`structural_loss` with the NLL node cost and the order "
                                  "term (`order_weight=2`), forced",
    "ordered structural, learnt": "ordered structural, learnt",
    "segmentation + ordered structural, learnt": "segmentation + ordered structural, learnt",
}


def kindergarten_epochs(kwargs: dict, epochs: int, root: Path
                        ) -> tuple[int | None, float, int]:
    """First validated epoch (1-based) with exact match 1.0, the best exact match, and the
    epochs trained."""
    import lightning as L

    from pyg_grapheme.training import GraphemeDataModule

    L.seed_everything(0, workers=True)
    module = build_graph(max_answer_length=16, num_examples=0, **kwargs)
    data = GraphemeDataModule(train_file="kindergarten", batch_size=128, shuffle=False,
                              root=str(root / "cache"))
    stop = L.pytorch.callbacks.EarlyStopping(
        monitor="val_exact_match", mode="max", stopping_threshold=1.0 - 1e-6, patience=10**9)
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, deterministic=True,
                        logger=L.pytorch.loggers.CSVLogger(root, name="logs"),
                        callbacks=[stop], enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        check_val_every_n_epoch=10, num_sanity_val_steps=0,
                        default_root_dir=root, gradient_clip_val=0.25)
    try:
        trainer.fit(module, datamodule=data)
    except FloatingPointError as err:
        print(f"  diverged: {err}", flush=True)
    trainer.logger.save()
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    exact = [(int(r["epoch"]) + 1, float(r["val_exact_match"])) for r in rows
             if r.get("val_exact_match")]
    first = next((e for e, v in exact if v >= 1.0 - 1e-6), None)
    return first, max((v for _, v in exact), default=0.0), trainer.current_epoch


def run_objective(name: str, kwargs: dict, tasks: Sequence[str], args: argparse.Namespace
                  ) -> dict:
    """One objective on the chosen tasks; a task that fails is recorded, not fatal."""
    entry: dict = {"name": name, "kwargs": kwargs}
    if "kindergarten" in tasks:
        cpu0 = time.process_time()
        try:
            with tempfile.TemporaryDirectory() as tmp:
                first, best, epochs = kindergarten_epochs(kwargs, args.epochs, Path(tmp))
            entry["kindergarten"] = {"first_perfect_epoch": first, "best_exact": best,
                                     "epochs": epochs}
        except Exception as err:  # keep the other objectives' figures
            traceback.print_exc()
            entry["kindergarten"] = {"error": f"{type(err).__name__}: {err}"}
        entry["kindergarten"]["cpu_s"] = round(time.process_time() - cpu0, 1)
    if "math1" in tasks:
        try:
            data = load_task("math1", args.data_dir, 0)
            res = train_graph(data, budget_s=args.budget_s, module_kwargs=kwargs, log=None,
                              name=name, cache_dir=args.data_dir / "graph_cache")
            entry["math1"] = {"test_exact": res.exact["test"], "val_exact": res.exact["val"],
                              "train_exact": res.exact["train"], "epochs": res.epochs,
                              "best_epoch": res.best_epoch, "cpu_s": round(res.cpu_s, 1),
                              "params": res.params}
        except Exception as err:
            traceback.print_exc()
            entry["math1"] = {"error": f"{type(err).__name__}: {err}"}
    return entry


def _cell(result: dict | None, figure: Callable[[dict], str]) -> str:
    """A task's table cell: "-" when not run, the error when it failed, else ``figure``."""
    if result is None:
        return "-"
    if "error" in result:
        return f"failed ({result['error']})"
    return figure(result)


def kindergarten_cell(entry: dict) -> str:
    return _cell(entry.get("kindergarten"), lambda k: (
        str(k["first_perfect_epoch"]) if k["first_perfect_epoch"] is not None
        else f"never (best {k['best_exact']:.3f})"))


def math1_cell(entry: dict) -> str:
    return _cell(entry.get("math1"), lambda m: f"{m['test_exact']:.3f} ({m['epochs']} epochs)")


def format_table(payload: dict) -> str:
    """The README's table: objective | kindergarten | math1, the run's settings in the
    header, the fastest kindergarten and the best math1 figure in bold."""
    args, entries = payload["args"], payload["objectives"]
    firsts = [e["kindergarten"].get("first_perfect_epoch") for e in entries
              if "kindergarten" in e]
    fastest = min((f for f in firsts if f is not None), default=None)
    scores = [e["math1"]["test_exact"] for e in entries if "test_exact" in e.get("math1", {})]
    best = max(scores, default=None)
    # A task no objective ran (``--tasks math1``) gets no column.
    ran = [task for task in ("kindergarten", "math1") if any(task in e for e in entries)]
    heads = {"kindergarten": f"kindergarten: first epoch with every answer right (of "
                             f"{args['epochs']})",
             "math1": f"math1: test exact match ({args['budget_s']:g} CPU s)"}
    lines = ["| objective | " + " | ".join(heads[task] for task in ran) + " |",
             "|---" * (len(ran) + 1) + "|"]
    for entry in entries:
        cells = {"kindergarten": kindergarten_cell(entry), "math1": math1_cell(entry)}
        if fastest is not None and entry.get("kindergarten", {}).get(
                "first_perfect_epoch") == fastest:
            cells["kindergarten"] = f"**{cells['kindergarten']}**"
        if best is not None and entry.get("math1", {}).get("test_exact") == best:
            cells["math1"] = f"**{cells['math1']}**"
        lines.append(f"| {LABELS.get(entry['name'], entry['name'])} | "
                     + " | ".join(cells[task] for task in ran) + " |")
    return "\n".join(lines) + "\n"


def write_results(path: Path, objectives: list[dict], args: argparse.Namespace,
                  argv: Sequence[str] | None) -> None:
    """The run as JSON (command, arguments, one entry per objective, table), atomically
    (the writer ``baseline_seq2seq.py --out`` uses), so a stopped run keeps what it
    measured."""
    from pyg_grapheme.data.curriculum import atomic_write_bytes

    words = sys.argv[1:] if argv is None else list(argv)
    env = "OMP_NUM_THREADS=1 " if os.environ.get("OMP_NUM_THREADS") == "1" else ""
    payload = {"kind": "ablation",
               "command": env + shlex.join(["python", "experiments/objective_ablation.py",
                                            *words]),
               "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "objectives": objectives}
    payload["table"] = format_table(payload)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(payload, indent=1, ensure_ascii=False) + "\n").encode())


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="kindergarten,math1")
    ap.add_argument("--objectives", default=";".join(OBJECTIVES), help="names, ;-separated")
    ap.add_argument("--epochs", type=int, default=400)
    ap.add_argument("--budget-s", type=float, default=240)
    ap.add_argument("--data-dir", type=Path, default=Path("data_cache/baseline"))
    ap.add_argument("--graph-kwargs", default="",
                    help="added to every objective, 'key=value,...' as in baseline_seq2seq.py "
                         "(e.g. model.run_positions=0,init_head_prior=True)")
    ap.add_argument("--out", type=Path, help="write the results as JSON here, after every "
                                             "objective")
    args = ap.parse_args(argv)
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if unknown := set(args.tasks) - {"kindergarten", "math1"}:
        ap.error(f"unknown task(s) {sorted(unknown)}; known: kindergarten, math1")
    args.objectives = [n.strip() for n in args.objectives.split(";") if n.strip()]
    if unknown := [n for n in args.objectives if n not in OBJECTIVES]:
        ap.error(f"unknown objective(s) {unknown}; known: {'; '.join(OBJECTIVES)}")
    return args


def main(argv: Sequence[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    extra = parse_kwargs(args.graph_kwargs)
    torch.set_num_threads(1)  # CPU seconds compare across objectives and machines
    results: list[dict] = []
    for name in args.objectives:
        print(f"== {name}", flush=True)
        entry = run_objective(name, {**OBJECTIVES[name], **extra}, args.tasks, args)
        results.append(entry)
        print(f"| {name} | {kindergarten_cell(entry)} | {math1_cell(entry)} |", flush=True)
        if args.out:
            write_results(args.out, results, args, argv)
    print("\n" + format_table({"args": vars(args), "objectives": results}))
    if args.out:
        print(f"results written to {args.out}")
    return results


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
