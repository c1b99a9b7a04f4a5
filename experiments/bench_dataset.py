"""Peak memory of building a dataset cache from a JSONL file, and of loading it.

Writes a QA JSONL file of about ``--mb`` MB (generated place-value, compare and rounding
questions), builds :class:`~pyg_grapheme.data.TextPairDataset` from it in a fresh
process, then loads the cache in another; prints the peak resident memory (``ru_maxrss``)
of each, as a multiple of the file's size, and the cache's size. ``--out FILE.json``
writes the figures for the README's speed table (``experiments/readme_tables.py``).

    python experiments/bench_dataset.py --mb 50 [--out experiments/results/bench_dataset.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a source checkout

CHILD = """
import resource, sys, time
sys.path.insert(0, {root!r})
import torch
torch.set_num_threads(1)
from pyg_grapheme.data import TextPairDataset
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
ds = TextPairDataset({cache!r}, {path!r}, log=False)
print(base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter() - t0, len(ds))
"""


def write_file(path: Path, mb: float) -> int:
    from pyg_grapheme.data.tasks import generate_task

    records = []
    for name in ("place_value", "compare", "rounding"):
        records += generate_task(name, seed=0)["train"]
    target, size = mb * 1e6, 0
    with path.open("w", encoding="utf-8") as fh:
        i = 0
        while size < target:
            line = json.dumps(records[i % len(records)], ensure_ascii=False) + "\n"
            fh.write(line)
            size += len(line.encode())
            i += 1
    return i


def child(path: Path, cache: Path) -> tuple[float, float, float, int]:
    """One build (or load) of the cache in a fresh interpreter: its peak RSS before and
    after, in MB (``ru_maxrss`` is KiB on Linux), the seconds it took and the pairs."""
    code = CHILD.format(root=str(ROOT), cache=str(cache), path=str(path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    base, peak, seconds, n = out.stdout.split()
    return int(base) / 1024, int(peak) / 1024, float(seconds), int(n)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=50.0)
    parser.add_argument("--out", type=Path, help="write the measured figures as JSON here")
    args = parser.parse_args(argv)
    if args.mb <= 0:
        parser.error(f"--mb must be positive, got {args.mb}")
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        path, cache = Path(tmp) / "qa.jsonl", Path(tmp) / "cache"
        t0 = time.perf_counter()
        lines = write_file(path, args.mb)
        file_mb = path.stat().st_size / 1e6
        print(f"{file_mb:.1f} MB, {lines:,} pairs written in {time.perf_counter() - t0:.0f} s")
        rows = []
        for stage in ("build", "load"):
            base, peak, seconds, n = child(path, cache)
            rows.append({"stage": stage, "pairs": n, "base_mb": base, "peak_mb": peak,
                         "seconds": seconds})
        cache_mb = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) / 1e6
    print("\n| stage | pairs | peak RSS MB | over the interpreter's | x file size | s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['stage']} | {r['pairs']:,} | {r['peak_mb']:.0f} | "
              f"{r['peak_mb'] - r['base_mb']:.0f} | "
              f"{(r['peak_mb'] - r['base_mb']) / file_mb:.1f} | {r['seconds']:.1f} |")
    print(f"\ncache: {cache_mb:.0f} MB ({cache_mb / file_mb:.1f} x the file)")
    # The children set one torch thread each (CHILD); the row reports it like the others.
    result = {"file_mb": file_mb, "pairs": lines, "cache_mb": cache_mb, "threads": 1,
              "cpus": os.cpu_count(), "load": load, "stages": rows}
    if args.out:
        from readme_tables import write_result  # experiments/ is the script's path

        write_result(args.out, "bench_dataset", "bench_dataset.py", result, argv)
        print(f"results written to {args.out}")
    return result


if __name__ == "__main__":
    main()
