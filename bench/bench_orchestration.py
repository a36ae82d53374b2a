"""Orchestration overhead of a preset: wall time against the cells' own training time.

    python bench/bench_orchestration.py [--preset default] [--store DIR]

Runs the preset into a fresh store through the CLI, then again (everything complete), and prints:
the first run's wall time, the sum of the cells' training seconds divided by the workers (the ideal
wall time of the training alone), the overhead as a share of the wall time, where that overhead went
(from the times the store's artifacts were published), and the rerun's wall time.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flows.spec import load_spec
from storage.catalog import open_catalog
from storage.store import COMPLETE_MARKER, Store


def timed_run(preset: str, store: Path) -> float:
    started = time.perf_counter()
    command = [sys.executable, "-m", "flows.cli", "run", "--preset", preset, "--store", str(store)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def published(store: Path, kind: str) -> list[float]:
    """When each complete artifact of a kind was published (its marker's time), in wall-clock seconds."""
    return sorted(path.stat().st_mtime for path in store.glob(f"{kind}/*/{COMPLETE_MARKER}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--store", type=Path, help="a fresh folder (default: a temporary one)")
    args = parser.parse_args()
    store = args.store or Path(tempfile.mkdtemp(prefix="scalelaw-bench-")) / "store"
    shutil.rmtree(store, ignore_errors=True)
    workers = load_spec(args.preset).execution.workers

    started = time.time()
    first = timed_run(args.preset, store)
    ended = started + first
    cells, train_seconds, slowest = (
        open_catalog(Store(store))
        .execute("select count(*), sum(train_seconds), max(train_seconds) from runs")
        .fetchone()
    )
    prepared, cells_done, reported = (
        published(store, "tokens")[-1],
        published(store, "cells"),
        published(store, "reports")[-1],
    )
    rerun = timed_run(args.preset, store)
    ideal = train_seconds / workers
    overhead = first - ideal
    print(f"preset {args.preset}: {cells} cells, {workers} workers")
    print(f"first run wall time           {first:8.1f} s")
    print(f"cell training time / workers  {ideal:8.1f} s (sum {train_seconds:.1f} s, max {slowest:.1f} s)")
    print(f"orchestration overhead        {overhead:8.1f} s = {overhead / first:.1%} of the wall time")
    print(f"  start, corpus, vocabulary, tokens   {prepared - started:8.1f} s")
    print(
        f"  cells (first to last published)     {cells_done[-1] - prepared:8.1f} s, of which training "
        f"{ideal:.1f} s; the rest is evaluation, saving, samples, worker start and idle workers"
    )
    print(f"  fits and report                     {reported - cells_done[-1]:8.1f} s")
    print(f"  exit                                {ended - reported:8.1f} s")
    print(f"rerun, all cells complete     {rerun:8.1f} s = {rerun / first:.1%} of the first run")


if __name__ == "__main__":
    main()
