"""How many full-batch epochs ``make run`` needs to memorise kindergarten, per config and seed.

Every run is ``python -m pyg_grapheme fit --config experiments/kindergarten.yaml`` itself
(the CLI, in a subprocess with one thread), with ``--seed_everything S``, a temporary
``--trainer.default_root_dir`` and the overrides a config names; a callback added with
``--trainer.callbacks+`` reads the module's decoded answers at each validation (every 10
epochs, the YAML's) and records, besides exact match: the number of distinct answers,
the fraction with the right length (grapheme count) and, of those, the fraction with the
right content. It changes nothing the run computes.

Per run: the first validated epoch with every answer right, whether every later
validation up to ``max_epochs`` stays at 1.0 ("stays"), the lowest exact match after
the first 100% and the CPU seconds; the table's last column is the epochs to 100% over
those of the first config, measured in the same invocation (the peer). ``--curve``
prints the per-validation diagnostics of every run.

    OLD="--model.init_args.init_head_prior false --model.optimizer.lr 0.001 \\
         --model.model.pool_tau 1.0 --model.lr_scheduler null"   # the config before issue 11
    OMP_NUM_THREADS=1 python experiments/kindergarten_schedule.py --seeds 0,1,2 --curve \\
        --config "make run=" --config "previous=$OLD"
    # a held-out variant of the data (kindergarten_variants.py writes them)
    OMP_NUM_THREADS=1 python experiments/kindergarten_schedule.py --seeds 0 \\
        --data runs/kg_variants/kg_rephrased.jsonl --config "make run=" --config "previous=$OLD"
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import lightning as L

ROOT = Path(__file__).resolve().parents[1]
YAML = ROOT / "experiments" / "kindergarten.yaml"


class AnswerStats(L.Callback):
    """At each validation: distinct answers, right length, right content given the length
    (from ``GraphemeModule.examples``, the epoch's (question, answer, truth) triples),
    appended as JSON lines to ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        from pyg_grapheme.data.graphemes import grapheme_spans

        triples = pl_module.examples
        diff = [len(grapheme_spans(a)) - len(grapheme_spans(t)) for _, a, t in triples]
        length = [d == 0 for d in diff]
        content = [a == t for _, a, t in triples]
        n_len = sum(length)
        row = {"epoch": trainer.current_epoch + 1, "n": len(triples),
               "exact": sum(content) / max(len(triples), 1),
               "distinct": len({a for _, a, _ in triples}),
               "right_length": n_len / max(len(triples), 1),
               "too_long": sum(d > 0 for d in diff), "too_short": sum(d < 0 for d in diff),
               "content_given_length": (sum(c for c, ok in zip(content, length, strict=True) if ok)
                                        / max(n_len, 1)),
               "theta": float(pl_module.model.theta.detach())}
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")


def one_run(overrides: Sequence[str], seed: int, data: str | None, epochs: int | None
            ) -> dict:
    """Train the YAML once in a subprocess; its validations, losses and CPU seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        stats = Path(tmp) / "stats.jsonl"
        argv = [sys.executable, "-m", "pyg_grapheme", "fit", "--config", str(YAML),
                "--seed_everything", str(seed), "--trainer.default_root_dir", tmp,
                "--trainer.callbacks+=kindergarten_schedule.AnswerStats",
                f"--trainer.callbacks.path={stats}", "--trainer.enable_progress_bar=false",
                "--model.init_args.num_examples=0", *overrides]
        if data:  # the CLI runs in the temporary folder: a relative path would miss
            argv += ["--data.train_file", str(Path(data).resolve()) if Path(data).exists()
                     else data]
        if epochs:
            argv += ["--trainer.max_epochs", str(epochs)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "experiments"),
                                              os.environ.get("PYTHONPATH", "")])}
        t0 = time.time()
        proc = subprocess.run(argv, cwd=tmp, env=env, capture_output=True, text=True)
        wall = time.time() - t0
        if proc.returncode:
            return {"error": proc.stderr.strip().splitlines()[-3:], "argv": argv}
        vals = [json.loads(line) for line in stats.read_text().splitlines()]
        metrics = next(Path(tmp).glob("logs/version_*/metrics.csv"))
        with open(metrics) as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("train_loss")]
        loss = {int(r["epoch"]) + 1: float(r["train_loss"]) for r in rows}
        grad = {int(r["epoch"]) + 1: float(r["grad_norm"]) for r in rows if r.get("grad_norm")}
        cpu = _child_cpu()
    first = next((v["epoch"] for v in vals if v["exact"] >= 1 - 1e-9), None)
    after = [v["exact"] for v in vals if first is not None and v["epoch"] >= first]
    return {"first": first, "stays": bool(after) and min(after) >= 1 - 1e-9,
            "min_after": min(after) if after else None,
            "best": max(v["exact"] for v in vals), "vals": vals,
            "loss": [loss[e] for e in sorted(loss)], "grad_norm": [grad[e] for e in sorted(grad)],
            "wall_s": round(wall, 1), "cpu_s": cpu}


_cpu_seen = 0.0


def _child_cpu() -> float:
    """CPU seconds of the subprocess that just ended (children's time since the last call)."""
    global _cpu_seen
    t = os.times()
    total = t.children_user + t.children_system
    spent, _cpu_seen = total - _cpu_seen, total
    return round(spent, 1)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", action="append", required=True,
                    help='"NAME=CLI OVERRIDES" (repeatable; "yaml=" is the YAML as is); '
                         "the first is the peer of the ratio column")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--data", default=None, help="a JSONL file instead of kindergarten")
    ap.add_argument("--epochs", type=int, default=None, help="override max_epochs")
    ap.add_argument("--curve", action="store_true", help="print every validation")
    ap.add_argument("--out", default=None, help="append each run as a JSON line")
    args = ap.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.configs = [tuple(c.split("=", 1)) for c in args.config]
    if bad := [c for c in args.config if "=" not in c]:
        ap.error(f"--config needs NAME=OVERRIDES: {bad}")
    return args


def main(argv: Sequence[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    print(f"# {shlex.join(sys.argv)}", flush=True)
    print("| config | seed | first epoch with every answer right | stays to the end | "
          "lowest after | CPU s | epochs / peer's |\n|---|---|---|---|---|---|---|", flush=True)
    runs, peer = [], {}
    for name, overrides in args.configs:
        for seed in args.seeds:
            res = one_run(shlex.split(overrides), seed, args.data, args.epochs)
            res.update(config=name, overrides=overrides, seed=seed, data=args.data)
            runs.append(res)
            if args.out:
                with open(args.out, "a") as fh:
                    fh.write(json.dumps(res) + "\n")
            if "error" in res:
                print(f"| {name} | {seed} | error: {res['error']} |", flush=True)
                continue
            if name == args.configs[0][0]:
                peer[seed] = res["first"]
            ratio = (f"{res['first'] / peer[seed]:.2f}" if res["first"] and peer.get(seed)
                     else "-")
            low = "-" if res["min_after"] is None else f"{res['min_after']:.3f}"
            first = res["first"] or f"never (best {res['best']:.3f})"
            print(f"| {name} | {seed} | {first} | {'yes' if res['stays'] else 'no'} | {low} | "
                  f"{res['cpu_s']} | {ratio} |", flush=True)
            if args.curve:
                for v in res["vals"]:
                    e = v["epoch"]
                    print(f"    epoch {e:3d}: loss {res['loss'][e - 1]:.3f} "
                          f"grad norm {res['grad_norm'][e - 1]:.2f} "
                          f"exact {v['exact']:.3f} distinct {v['distinct']:2d} right length "
                          f"{v['right_length']:.3f} content|length "
                          f"{v['content_given_length']:.3f} theta {v['theta']:.3f}", flush=True)
    return runs


if __name__ == "__main__":
    main()
